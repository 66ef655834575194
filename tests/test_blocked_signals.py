"""``pipeline.signals.blocked_signals``: the mask the crawl and the relevance trainer start their children under."""
import signal
import threading

import pytest

from pipeline.signals import blocked_signals

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="needs POSIX signal masks")


def _mask() -> set[signal.Signals]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


@pytest.fixture
def usr1_received():
    """A SIGUSR1 handler that records each delivery; the previous handler and mask come back afterwards."""
    received: list[int] = []
    handler = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        yield received
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGUSR1, handler)


def test_blocks_the_signals_inside_and_restores_the_mask_after():
    before = _mask()
    assert not {signal.SIGUSR1, signal.SIGUSR2} & before
    with blocked_signals({signal.SIGUSR1, signal.SIGUSR2}):
        assert _mask() == before | {signal.SIGUSR1, signal.SIGUSR2}
    assert _mask() == before


def test_restores_the_previous_mask_not_an_unblocked_one(usr1_received):
    # A signal already blocked before (an outer block, a child hook's mask) stays blocked after: the mask is
    # restored, not the signals unblocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    before = _mask()
    with blocked_signals({signal.SIGUSR1, signal.SIGUSR2}):
        assert {signal.SIGUSR1, signal.SIGUSR2} <= _mask()
    assert _mask() == before and signal.SIGUSR2 in before and signal.SIGUSR1 not in before


def test_restores_the_mask_when_the_body_raises():
    before = _mask()
    with pytest.raises(ValueError, match="in the body"):
        with blocked_signals({signal.SIGUSR1}):
            assert signal.SIGUSR1 in _mask()
            raise ValueError("in the body")
    assert _mask() == before


def test_a_signal_sent_meanwhile_is_delivered_on_exit(usr1_received):
    with blocked_signals({signal.SIGUSR1}):
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # to this thread, which blocks it
        assert signal.SIGUSR1 in signal.sigpending()
        assert usr1_received == []
    assert usr1_received == [signal.SIGUSR1]
    assert signal.SIGUSR1 not in signal.sigpending()


def test_a_signal_sent_meanwhile_is_delivered_on_exit_even_when_the_body_raises(usr1_received):
    with pytest.raises(ValueError):
        with blocked_signals({signal.SIGUSR1}):
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            raise ValueError("in the body")
    assert usr1_received == [signal.SIGUSR1]
