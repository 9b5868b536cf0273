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
from tests.processes import run_under

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


@pytest.mark.slow
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


def test_is_chief_is_what_the_strategy_says():
    import tensorflow as tf

    for strategy in (get_strategy("auto"), get_strategy("cpu"), tf.distribute.MirroredStrategy()):
        assert is_chief(strategy) is strategy.extended.should_checkpoint is True


CHIEF = """
import json
from stackae.distribute import get_strategy, is_chief

strategy = get_strategy("multi-worker")  # waits for its peer: the cluster really forms
print(json.dumps({"chief": is_chief(strategy), "replicas": strategy.num_replicas_in_sync}))
"""


def test_is_chief_is_worker_zero_of_a_two_worker_cluster():
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config), TF_CPP_MIN_LOG_LEVEL="3")
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", CHIEF],
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
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results == [{"chief": True, "replicas": 2}, {"chief": False, "replicas": 2}]


JAX_DATA_PARALLEL = """
import json
import sys

sys.modules["tensorflow"] = None
import keras
import numpy as np

import stackae
from stackae.distribute import LocalDevices, default_group, get_strategy, is_chief

x = np.random.default_rng(0).random((96, 30)).astype("float32")


def train(strategy):
    with strategy.scope():
        model = stackae.AutoEncoder(8, corruption=0.3, seed=4)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        model.build((None, 30))
        rng = np.random.default_rng(5)
        for variable in model.layer.weights:
            variable.assign(rng.uniform(-0.3, 0.3, variable.shape).astype("float32"))
        history = model.fit(x, batch_size=8, epochs=2, shuffle=False, verbose=0)
        group = default_group(16)
    weights = [keras.ops.convert_to_numpy(w) for w in model.layer.weights]
    return history.history["loss"], weights, group


strategy = get_strategy("auto")
parallel, single = train(strategy), train(LocalDevices())
print(json.dumps({
    "strategy": type(strategy).__name__,
    "devices": len(keras.distribution.list_devices()),
    "chief": is_chief(strategy),
    "loss": [parallel[0], single[0]],
    "groups": [parallel[2], single[2]],
    "max_weight_difference": max(float(abs(a - b).max()) for a, b in zip(parallel[1], single[1])),
}))
"""


def test_jax_several_devices_use_keras_data_parallel(tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = run_under("jax", JAX_DATA_PARALLEL, tmp_path, env=env, timeout=TIMEOUT)
    assert result["strategy"] == "DataParallel" and result["devices"] == 2 and result["chief"]
    assert result["groups"] == [1, 16]  # the data is split along each element's first axis
    parallel, single = result["loss"]
    np.testing.assert_allclose(parallel, single, rtol=1e-5)
    assert result["max_weight_difference"] < 1e-5
