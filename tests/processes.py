"""Starting a stackae command in a child process and stopping it at a chosen moment."""

import random
import subprocess
import time

DEADLINE = 120  # seconds any one child may take before a test gives up on it


def signal_when(command, ready, sig, env=None):
    """Start `command`; once `ready()` is true, wait a moment, send `sig`; (returncode, stderr).

    The short random wait lands the signal somewhere inside the next epoch.
    """
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and child.poll() is None:
            if ready():
                time.sleep(random.uniform(0, 0.15))
                break
            time.sleep(0.01)
        child.send_signal(sig)
        _, err = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, err
