"""The child processes of a process, from /proc (Linux), for the tests that kill or interrupt a parent; whether a
process waits for a lock (the tests of claims made at once); and a live process to stand for a run still going
(``sleeper``, a fixture for every test: tests/conftest.py)."""
import subprocess

import pytest


def waiting_for_a_lock(pid: int | None = None) -> bool:
    """Whether process ``pid`` (any process, without one) waits for a lock another holds (``/proc/locks``: a ``->``
    line)."""
    with open("/proc/locks") as handle:
        return any("->" in line and (pid is None or str(pid) in line.split()) for line in handle)


def children_running(pid: int, command_part: bytes) -> list[int]:
    """The children of ``pid`` whose command line holds ``command_part`` (``b"crawler.runner"`` for the crawl
    processes once exec'd, ``b"spawn_main"`` for multiprocessing's spawned ones); [] when ``pid`` is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            kids = [int(kid) for kid in handle.read().split()]
    except OSError:
        return []
    found = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as handle:
                if command_part in handle.read():
                    found.append(kid)
        except OSError:  # ended meanwhile
            pass
    return found


@pytest.fixture
def sleeper():
    """A live process of this host that is not this one (its pid, its start time): the run a marker names. A test
    may end it itself (``kill`` and ``wait``) to make that run one that has ended."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()
