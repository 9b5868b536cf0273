"""Child processes for tests: a stackae command stopped at a chosen moment, a script under
a chosen Keras backend."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

DEADLINE = 120  # seconds any one child may take before a test gives up on it


def default_signals():
    """In a child: SIGINT and SIGTERM as a terminal delivers them.

    A suite started in the background (`pytest &`) runs with SIGINT ignored,
    and its children inherit that; a test that sends SIGINT sets it back.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def signal_when(command, ready, sig, env=None, wait=(0, 0.15)):
    """Start `command`; once `ready()` is true, wait a moment, send `sig`; (returncode, stderr).

    The short random wait (`wait`, seconds) lands the signal somewhere inside the next epoch.
    """
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=default_signals,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and child.poll() is None:
            if ready():
                time.sleep(random.uniform(*wait))
                break
            time.sleep(0.01)
        child.send_signal(sig)
        _, err = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, err


# Prepended to a script that must run without TensorFlow: any import of it fails.
NO_TENSORFLOW = 'import sys\nsys.modules["tensorflow"] = None\n'


def run_under(backend, script, tmp_path, *, env=None, without_tensorflow=False, timeout=300):
    """Run `script` in a fresh Python under KERAS_BACKEND=`backend`; return its JSON stdout."""
    code = textwrap.dedent(script)
    if without_tensorflow:
        code = NO_TENSORFLOW + code
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=environment,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def blocked_cli(*blocked):
    """A function: `stackae ARGS` as a command for a fresh Python where importing any of
    `blocked` (module names) fails, as on a machine without them."""
    code = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    code += "from stackae_cli.main import cli\ncli()"

    def command(*args):
        return [sys.executable, "-c", code, *map(str, args)]

    return command


def run_ok(command, env):
    """Run `command` under `env`; its stdout (the test fails on a non-zero exit)."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
