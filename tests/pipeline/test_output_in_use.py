"""A second run into an output folder whose run is still going (``pipeline.outputs.prepare_output``, through the
filter's own prepare step): it was taken for an interrupted run and its partial output deleted, so the first
run's results were lost. A run still going is refused; a run whose process is gone is cleared, as before."""
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import schemas
from filters.synthetic import candidate, make_image
from pipeline import filter as filter_stage
from pipeline import outputs
from pipeline.outputs import RUN_MARKER, OutputExistsError

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times are read from /proc")


@pytest.fixture
def crawl(tmp_path):
    """A crawl folder with one candidate: the input the prepare step checks the output against."""
    folder = tmp_path / "crawl" / "candidates"
    folder.mkdir(parents=True)
    rows = [candidate(make_image(1, 400, 400), "a small dog playing in the garden", 0)]
    schemas.write_table(schemas.to_table(rows, "candidates"), str(folder / "part-00000.parquet"), "candidates")
    return tmp_path / "crawl"


def _partial_run(output, marker):
    """What a filter run leaves while it runs (or once killed): its marker, shards, pending stats, no stats.json."""
    (output / "pairs").mkdir(parents=True)
    (output / "pairs" / "part-00000-of-00001.parquet").write_text("partial")
    (output / outputs.PENDING_STATS).write_text("{}")
    (output / RUN_MARKER).write_text(json.dumps(marker))


def test_a_run_still_going_in_another_process_is_refused_even_with_overwrite(crawl, tmp_path):
    """The marker the filter's own prepare step writes in a child process names that process: while it lives, a
    second run into the folder is refused (--overwrite too) and nothing is removed; once it is gone, the folder is
    an interrupted run's, cleared."""
    output = tmp_path / "filter"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pipeline import filter as filter_stage
        filter_stage._prepare_output({str(output)!r}, False, {str(crawl)!r})
        print("ready", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert child.stdout.readline().strip() == "ready"
        (output / "pairs").mkdir()
        (output / "pairs" / "part-00000-of-00001.parquet").write_text("the running run's shard")
        marker = json.loads((output / RUN_MARKER).read_text())
        assert (marker["stage"], marker["pid"], marker["host"]) == ("filter", child.pid, socket.gethostname())
        for overwrite in (False, True):
            with pytest.raises(OutputExistsError) as caught:
                filter_stage._prepare_output(str(output), overwrite, str(crawl))
            message = str(caught.value)
            assert "\n" not in message and str(output) in message, message
            assert f"pid {child.pid} on host {socket.gethostname()} since " in message, message
        assert (output / "pairs" / "part-00000-of-00001.parquet").read_text() == "the running run's shard"
        assert json.loads((output / RUN_MARKER).read_text()) == marker
    finally:
        child.kill()
        child.wait()
    filter_stage._prepare_output(str(output), False, str(crawl))  # the run is over: an interrupted run's leftovers
    assert not (output / "pairs").exists()
    assert json.loads((output / RUN_MARKER).read_text())["pid"] == os.getpid()


def test_a_live_process_with_another_start_time_is_not_the_run(crawl, tmp_path, sleeper, caplog):
    """The pid was reused: the live process started at another time than the run, whose folder is cleared."""
    output = tmp_path / "filter"
    marker = outputs.run_marker("filter", sleeper.pid)
    assert outputs.run_in_progress(marker) is not None  # as written, the sleeper is that run
    _partial_run(output, {**marker, "pid_started": marker["pid_started"] - 1})
    with caplog.at_level(logging.WARNING):
        filter_stage._prepare_output(str(output), False, str(crawl))
    assert "removing the partial output of an interrupted run" in caplog.text
    assert not (output / "pairs").exists() and not (output / outputs.PENDING_STATS).exists()


def test_a_marker_whose_process_is_gone_or_that_names_none_is_an_interrupted_run(crawl, tmp_path, caplog):
    ended = subprocess.Popen(["true"])
    ended.wait()
    gone = outputs.run_marker("filter", ended.pid)
    markers = {
        "dead": gone,
        "old format": {"stage": "filter"},  # written before markers named their process
        "this process": outputs.run_marker("filter"),  # an earlier run of this process, which has returned
        "rebooted": {**outputs.run_marker("filter"), "boot": "another-boot"},
    }
    for name, marker in markers.items():
        output = tmp_path / name
        _partial_run(output, marker)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            filter_stage._prepare_output(str(output), False, str(crawl))
        assert "removing the partial output of an interrupted run" in caplog.text, name
        assert not (output / "pairs").exists(), name
        assert outputs.run_in_progress(marker) is None, name


def test_a_run_started_on_another_host_is_refused_unless_overwrite(crawl, tmp_path, sleeper, caplog):
    """Whether another host's process still runs cannot be checked from here: refused, and the error says
    --overwrite removes it; with --overwrite it is removed, with a warning."""
    output = tmp_path / "filter"
    marker = {**outputs.run_marker("filter", sleeper.pid), "host": "elsewhere.example"}
    _partial_run(output, marker)
    with pytest.raises(OutputExistsError, match=r"started on another host \(pid \d+ on host elsewhere.example "
                                                r"since .*\).*--overwrite"):
        filter_stage._prepare_output(str(output), False, str(crawl))
    assert (output / "pairs").exists()
    with caplog.at_level(logging.WARNING):
        filter_stage._prepare_output(str(output), True, str(crawl))
    assert "elsewhere.example" in caplog.text
    assert not (output / "pairs").exists()
    assert json.loads((output / RUN_MARKER).read_text())["host"] == socket.gethostname()


def test_a_second_claim_of_the_marker_is_refused(tmp_path, sleeper):
    """The marker is written aside and linked to its name, which fails once taken: a run that claims a folder
    another run has just claimed (after both checked it) is refused, naming that run."""
    output = tmp_path / "filter"
    output.mkdir()
    (output / RUN_MARKER).write_text(json.dumps(outputs.run_marker("filter", sleeper.pid)))
    with pytest.raises(OutputExistsError, match=f"pid {sleeper.pid} on host"):
        outputs._mark_started(str(output), "filter")
    assert sorted(os.listdir(output)) == [RUN_MARKER]  # no temporary file left
