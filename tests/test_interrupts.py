"""common/interrupts.py: a stop held back until a call ends (`interrupts_deferred`)."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from twinturbo.common.interrupts import interrupts_deferred


@pytest.fixture
def stop_on_sigterm():
    """SIGTERM raises KeyboardInterrupt, as a tt-sweep worker's stop does (train/sweep/local.py); restored after."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    yield stop
    signal.signal(signal.SIGTERM, previous)


def test_a_stop_inside_the_body_is_raised_after_it_whole(stop_on_sigterm):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("after the signal")  # without the deferral the handler raises before this line
            os.kill(os.getpid(), signal.SIGTERM)  # a second one while held: one KeyboardInterrupt in all
            steps.append("end of the body")
        steps.append("after the block")  # never reached: the stop is raised as the block ends
    assert steps == ["after the signal", "end of the body"]
    assert signal.getsignal(signal.SIGTERM) is stop_on_sigterm


def test_without_a_signal_nothing_is_raised_and_the_handlers_are_restored(stop_on_sigterm):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    with interrupts_deferred():
        assert signal.getsignal(signal.SIGTERM) is not stop_on_sigterm  # held while the body runs
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_ignored_signal_stays_ignored(stop_on_sigterm):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with interrupts_deferred():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_outside_the_main_thread_it_changes_nothing(stop_on_sigterm):
    seen = []

    def body():
        with interrupts_deferred():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [stop_on_sigterm]
