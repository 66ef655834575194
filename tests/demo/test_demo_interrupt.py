"""Ctrl-C during a step of `lait demo` that runs a command: the step's process, which got the Ctrl-C too (one of the
terminal's process group), is given time to stop by itself, and ended when it does not (``Demo.stop_process``)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")

#: A demo whose only step runs ``CHILD``, with the waits given; exits 130 on Ctrl-C as `lait demo` does.
DEMO = r"""
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the test runner ignores
from demo import run as demo_run
from demo.run import Demo, DemoConfig, Step

out, child, marker = sys.argv[1], sys.argv[2], sys.argv[3]
demo_run.STEP_STOP_WAIT, demo_run.STEP_TERM_WAIT = float(sys.argv[4]), float(sys.argv[5])
demo = Demo(DemoConfig(out=out), echo=lambda line: print(line, flush=True))
demo.steps = [Step("slow", "a step", command=lambda: [sys.executable, "-c", child, marker])]
demo.finish = lambda: None
try:
    demo.run()
except KeyboardInterrupt:
    sys.exit(130)
"""

#: A step's process (marker prefix in sys.argv[1]): says it is ready (its pid), and on Ctrl-C says it is stopping,
#: takes ``cleanup`` seconds to clean up, and says it is done; it ignores the signals named in ``ignore``.
CHILD = r"""
import os, signal, sys, time
marker, cleanup, ignore = sys.argv[1], {cleanup!r}, {ignore!r}

def stop(*_):
    open(marker + ".stopping", "w").close()
    time.sleep(cleanup)
    open(marker + ".cleaned", "w").close()
    sys.exit(130)

signal.signal(signal.SIGINT, stop)
for name in ignore:
    signal.signal(getattr(signal, name), signal.SIG_IGN)
with open(marker + ".ready", "w") as f:
    f.write(str(os.getpid()))
time.sleep(60)
"""


def _run_demo(tmp_path, cleanup: float, ignore: tuple[str, ...] = (), stop_wait: float = 30.0,
              term_wait: float = 5.0):
    """Start the demo, its step's process ready; returns (demo process, marker prefix, the step's pid)."""
    marker = str(tmp_path / "step")
    child = CHILD.format(cleanup=cleanup, ignore=ignore)
    proc = subprocess.Popen([sys.executable, "-c", DEMO, str(tmp_path / "out"), child, marker, str(stop_wait),
                             str(term_wait)], env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(marker + ".ready") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # the pid written
    assert os.path.exists(marker + ".ready"), proc.communicate(timeout=10)
    return proc, marker, int(open(marker + ".ready").read())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _finish(proc, timeout: float):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _demo_log(tmp_path) -> tuple[str, str]:
    log = json.load(open(tmp_path / "out" / "demo.json"))
    return log["status"], log["steps"][0]["status"]


def test_ctrl_c_lets_the_running_step_stop_by_itself(tmp_path):
    """The step takes 1 s to stop after Ctrl-C (as `lait relevance train`, which ends its member processes). Before,
    the demo killed it 0.25 s after the Ctrl-C (``subprocess.run``): its cleanup never ran, its workers were
    orphaned."""
    proc, marker, pid = _run_demo(tmp_path, cleanup=1.0)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the demo and its step alike
    out, err = _finish(proc, timeout=30)
    assert proc.returncode == 130, err
    assert os.path.exists(marker + ".cleaned"), out + err
    assert _gone(pid)  # waited for, not left behind
    assert "waiting up to 30 s for the command to stop" in out
    assert _demo_log(tmp_path) == ("interrupted", "interrupted")


def test_a_second_ctrl_c_ends_the_step_at_once(tmp_path):
    proc, marker, pid = _run_demo(tmp_path, cleanup=60.0)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    seen = ""
    while "waiting up to" not in seen:  # the demo waits for it (a Ctrl-C before that would be its first)
        line = proc.stdout.readline()
        assert line, seen
        seen += line
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # the step takes it too, and goes on stopping for 60 s
    out, err = _finish(proc, timeout=25)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 25  # not the 30 s wait
    assert not os.path.exists(marker + ".cleaned") and _gone(pid)
    assert _demo_log(tmp_path) == ("interrupted", "interrupted")


def test_a_step_that_does_not_stop_is_terminated_then_killed(tmp_path):
    """One that ignores Ctrl-C and SIGTERM alike: SIGTERM after the wait, SIGKILL after the next."""
    proc, marker, pid = _run_demo(tmp_path, cleanup=0.0, ignore=("SIGINT", "SIGTERM"), stop_wait=1.0, term_wait=1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = _finish(proc, timeout=20)
    assert proc.returncode == 130, err
    assert _gone(pid) and not os.path.exists(marker + ".stopping")
    assert _demo_log(tmp_path) == ("interrupted", "interrupted")
