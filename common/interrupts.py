"""Ctrl-C (or a worker's stop) that is never lost.

A signal handler runs wherever the interpreter happens to be, a weakref callback or an object's `__del__` included,
and Python drops an exception raised there: it prints 'Exception ignored in ... KeyboardInterrupt' with a traceback
and goes on, so the command trains on as if nothing happened (seen in 1 of 10 runs of tests/test_trackers.py, in a
tt-sweep worker). While `interrupts_kept` is in force, such a dropped KeyboardInterrupt is raised again 50 ms later
(SIGALRM), until it reaches code that handles it.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

RETRY_S = 0.05


@contextmanager
def interrupts_kept() -> Iterator[None]:
    """Raise a KeyboardInterrupt that Python dropped (an 'unraisable' one) again, RETRY_S later. Signal handlers
    belong to the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def again(signum, frame):
        raise KeyboardInterrupt

    def dropped(info) -> None:
        if issubclass(info.exc_type, KeyboardInterrupt):
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        else:
            hook(info)

    hook, sys.unraisablehook = sys.unraisablehook, dropped
    alarm = signal.signal(signal.SIGALRM, again)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, alarm)
        sys.unraisablehook = hook
