"""Ctrl-C and SIGTERM as a stop request that the job honours at its next check, never lost.

An exception raised from a signal handler lands wherever Python happens to be,
including inside a garbage-collection callback (JAX registers one whenever it
is imported), where it is printed as "Exception ignored" and lost. So the
handler only records the request; `check()` (called between batches by the
`StopOnRequest` callback and between a job's phases) raises `StopRequested`
in ordinary code. A second signal of either kind stops at once. A job that
changes no run (evaluate, encode, pictures: their outputs are written
atomically) has nothing to keep whole, so inside `at_once` the first signal
raises where it lands too; it is recorded first, so a raise that some library
swallows is raised again by the job's next `check()`.
"""

import contextlib
import signal
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # what shells report: 128 + signal
_requested = []  # the signal numbers received since `honour_signals` began
_at_once = []  # non-empty inside `at_once`


class StopRequested(BaseException):
    """The user asked the job to stop (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self):
        return EXIT_CODES.get(self.signum, 1)


def _request(signum, frame):
    if _requested:  # asked twice: stop now, wherever we are
        raise StopRequested(signum)
    _requested.append(signum)
    if _at_once:
        raise StopRequested(signum)


@contextlib.contextmanager
def at_once():
    """Inside, a stop request raises StopRequested where it lands (a job that writes no run)."""
    _at_once.append(True)
    try:
        check()
        yield
    finally:
        _at_once.pop()


@contextlib.contextmanager
def honour_signals():
    """While inside, SIGTERM and SIGINT request a stop instead of raising where they land.

    A SIGINT that is ignored (a job started in the background by a shell) stays
    ignored. Outside the main thread nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, _request)
    _requested.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested.clear()


def check():
    """Raise StopRequested if a stop was asked for."""
    if _requested:
        raise StopRequested(_requested[0])


def requested():
    """Whether a stop was asked for (Ctrl-C, SIGTERM) and not yet honoured."""
    return bool(_requested)
