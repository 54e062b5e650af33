"""Ctrl-C (or a worker's stop) that is never lost.

A signal handler runs wherever the interpreter happens to be, a weakref callback or an object's `__del__` included,
and Python drops an exception raised there: it prints 'Exception ignored in ... KeyboardInterrupt' with a traceback
and goes on, so the command trains on as if nothing happened (seen in 1 of 10 runs of tests/test_trackers.py, in a
tt-sweep worker). While `interrupts_kept` is in force, such a dropped KeyboardInterrupt is raised again 50 ms later
(SIGALRM), until it reaches code that handles it.

`interrupts_deferred` holds a stop back instead, for the length of a call that must not be cut in the middle (a
tracker's write: an interrupt inside MLflow's SQLite transaction left the store locked, and every run of the sweep
RUNNING, in 1 of 5 Ctrl-Cs of a two-worker sweep on a loaded CPU).
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

RETRY_S = 0.05
DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)  # the signals whose Python handlers stop a command


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


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the body whole: a signal of DEFERRED whose handler is a Python function (Ctrl-C's KeyboardInterrupt, a
    tt-sweep worker's stop, interrupts_kept's retry) is recorded while the body runs, and its handler is called as the
    body ends, so that its KeyboardInterrupt is raised here, after the body, never inside it. Signals left to the
    system (SIG_DFL, SIG_IGN) keep their action. Signal handlers belong to the main thread: elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handlers = {signum: signal.getsignal(signum) for signum in DEFERRED}
    held = [signum for signum, handler in handlers.items() if callable(handler)]
    for signum in held:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum in held:
            signal.signal(signum, handlers[signum])
        for signum in dict.fromkeys(caught):  # each signal once, in the order they came
            handler = signal.getsignal(signum)  # the handler now (a handler run before may have changed another's)
            if callable(handler):
                handler(signum, None)
