"""tf.distribute: MirroredStrategy on 2 logical CPUs, and a real 2-worker cluster on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

import stackae
from stackae.distribute import get_strategy, is_chief

HERE = Path(__file__).parent
TIMEOUT = 240  # seconds: a cluster that did not form must not hang the suite


def test_mirrored_equals_one_device_for_the_same_global_batch():
    done = subprocess.run(
        [sys.executable, str(HERE / "distributed_check.py")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=HERE.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["replicas"] == 2
    for name in ("pretrain", "finetune"):
        one, mirrored = result[name]["loss"]
        assert abs(one - mirrored) <= 1e-5 * abs(one), (name, result)
        assert result[name]["max_weight_difference"] < 1e-5, (name, result)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


ARGS = ["--layers", "16,8", "--data", "mnist-sample", "--limit", "400", "--epochs", "2"]
ARGS += ["--batch-size", "40", "-q"]


def stack_weights(run):
    model = keras.saving.load_model(Path(run) / "stack.keras")
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_two_worker_cluster_matches_one_process(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("stackae-worker-*"))
    workers = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config), TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, "-m", "stackae_cli", "pretrain", *ARGS]
        command += ["--strategy", "multi-worker", "--out", str(tmp_path / f"worker{index}")]
        workers.append(
            subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    try:
        outputs = [w.communicate(timeout=TIMEOUT) for w in workers]
    finally:
        for w in workers:  # never leave a worker behind, even on a timeout
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    # Only the chief (worker 0) wrote a run directory; worker 1 cleaned its scratch copy.
    assert (tmp_path / "worker0" / "manifest.json").is_file()
    assert not (tmp_path / "worker1").exists()
    assert set(scratch.glob("stackae-worker-*")) == before
    assert "run saved in" in outputs[0][0] and "run saved in" not in outputs[1][0]

    single = tmp_path / "single"
    done = subprocess.run(
        [sys.executable, "-m", "stackae_cli", "pretrain", *ARGS, "--out", str(single)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for a, b in zip(stack_weights(tmp_path / "worker0"), stack_weights(single)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_strategy_names():
    assert get_strategy("auto").num_replicas_in_sync == 1  # no GPUs here
    assert is_chief(get_strategy("cpu"))
    with pytest.raises(ValueError, match="strategy"):
        get_strategy("home-made")
    with get_strategy("cpu").scope():
        model = stackae.AutoEncoder(4)
        model.compile()
    assert model.steps_per_execution > 1 and model.jit_compile
