"""``pipeline.signals``: the mask the crawl and the relevance trainer start their children under
(``blocked_signals``), and their children's death with them (``die_with_parent_hook``)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipeline.signals import blocked_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


#: A process that dies with the parent it was given (sys.argv[1]; its own parent when empty), says so in the file
#: sys.argv[2], and sleeps.
DIES_WITH = r"""
import os, sys, time
from pipeline.signals import die_with_parent_hook
die_with_parent_hook(int(sys.argv[1]) if sys.argv[1] else os.getppid())()
open(sys.argv[2], "w").close()
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie nobody reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


@linux_only
def test_a_child_whose_parent_is_already_gone_ends_at_once(tmp_path):
    """The parent died before the child set the hook (so no signal will come): the pid it was given is not its
    parent's any more, and it ends itself with SIGTERM."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    proc = subprocess.run([sys.executable, "-c", DIES_WITH, gone.stdout.strip(), str(tmp_path / "ready")],
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert proc.returncode == -signal.SIGTERM and not (tmp_path / "ready").exists()


@linux_only
def test_a_child_gets_sigterm_when_its_parent_is_killed(tmp_path):
    """Even by SIGKILL, which the parent cannot pass on."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "child = subprocess.Popen([sys.executable, '-c', sys.argv[1], '', sys.argv[2]]); "
         "print(child.pid, flush=True); time.sleep(60)", DIES_WITH, str(tmp_path / "ready")],
        env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "ready").exists() and _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
