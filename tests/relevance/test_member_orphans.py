"""Relevance members trained in processes die with the training process, even when it is killed by SIGKILL (which it
cannot pass on): before, they were seen blocked minutes later, holding multiprocessing's resource tracker."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.procs import children_running

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Trains 2 members in 2 processes for long; writes sys.argv[2] once a member has sent its first steps (it runs its
#: training, past its start). Run with -c: the spawned members import none of it.
TRAIN = r"""
import sys
from filters.relevance import train as T
from filters.relevance.config import TrainConfig
from tests.relevance.scenes import make_pairs

out, marker = sys.argv[1], sys.argv[2]

class Bar:
    def update(self, n=1):
        if n:
            open(marker, "w").close()

    def set_postfix(self, **_):
        pass

    def close(self):
        pass

T._progress = lambda total, enabled: Bar()
T.train(make_pairs(2, seed=7), out, TrainConfig(epochs=100000, batch_size=2, members=2, processes=2, image_size=16,
                                              embed_dim=8))
"""


def _members(pid: int) -> list[int]:
    """The multiprocessing spawn children of ``pid`` (from /proc: their command line)."""
    return children_running(pid, b"spawn_main")


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie nobody reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow  # three processes that import torch: 6-8 s, 20 on a busy 2-core machine
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dying with the parent is Linux's prctl")
def test_members_die_with_a_training_process_killed_by_sigkill(tmp_path):
    marker = str(tmp_path / "training")
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, str(tmp_path / "model"), marker],
                            env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    members: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            members = _members(proc.pid) if len(members) < 2 else members
            if len(members) == 2 and os.path.exists(marker):
                break
            time.sleep(0.05)
        assert len(members) == 2 and os.path.exists(marker), proc.stderr.read() if proc.poll() is not None else ""
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in members) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in members if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in members:  # an orphan left by a failure here must not go on training
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stderr.close()
