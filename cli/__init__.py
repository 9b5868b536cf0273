"""The stackae command line (installed as the import package stackae_cli)."""

import os
import signal


def _stop_now(signum, frame):
    """A signal before the command's own handling begins: one line, no traceback.

    Nothing has been written yet (the imports are under way), so there is
    nothing to keep whole.
    """
    text = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    os.write(2, f"Error: {text}\n".encode())
    os._exit(128 + signum)


def main():
    """The `stackae` command; Ctrl-C or SIGTERM while it starts is one line (130, 143)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # a background job keeps it ignored
            signal.signal(signum, _stop_now)
    from stackae_cli.main import cli

    return cli(prog_name="stackae")
