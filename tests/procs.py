"""The child processes of a process, from /proc (Linux), for the tests that kill or interrupt a parent; whether a
process waits for a lock (the tests of claims made at once); and a live process to stand for a run still going
(``sleeper``, a fixture for every test: tests/conftest.py)."""
import json
import select
import subprocess
import time

import pytest


def waiting_for_a_lock(pid: int | None = None) -> bool:
    """Whether process ``pid`` (any process, without one) waits for a lock another holds (``/proc/locks``: a ``->``
    line)."""
    with open("/proc/locks") as handle:
        return any("->" in line and (pid is None or str(pid) in line.split()) for line in handle)


def start_apart(*argv: str, **popen) -> subprocess.Popen:
    """Run ``argv`` (stdout a text pipe) as no child of this process, through a shell: a run's child process takes
    its parent's run marker for its own run's (a crawl process of lait crawl), as a second command would not."""
    return subprocess.Popen(["sh", "-c", '"$@"; exit $?', "sh", *argv], stdout=subprocess.PIPE, text=True, **popen)


def wait_while_running(process: subprocess.Popen, done=lambda: False, seconds: float = 120) -> None:
    """Wait until ``process`` waits for a lock (``waiting_for_a_lock``), has ended, or ``done()`` holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not waiting_for_a_lock() and process.poll() is None and not done():
        time.sleep(0.02)


def json_answer(process: subprocess.Popen, seconds: float = 120):
    """The JSON line ``process`` answers with, once it has ended."""
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    assert ready, "the other process never answered"
    answer = json.loads(process.stdout.readline())
    process.wait()
    return answer


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
