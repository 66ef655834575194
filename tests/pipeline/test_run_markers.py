"""The run-marker pieces ``pipeline.outputs`` shares with the crawl, ``lait features`` and ``lait import-captions``:
``write_marker`` (claim a marker's name, or find who holds it), ``read_local_marker``, and the wording of a refusal
(``running_run_problem``, ``marker_taken_problem``), which each stage raises as its own error."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from pipeline import outputs

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times are read from /proc")


#: A live process of this host that is not this one, for as long as the tests run: the one that started them.
OTHER = os.getppid()


def test_write_marker_writes_a_free_name_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "new" / "_run.started.json"
    marker = outputs.run_marker("filter")
    assert outputs.write_marker(str(path), marker) is None
    assert json.loads(path.read_text()) == marker
    assert os.listdir(path.parent) == [path.name]


def test_write_marker_returns_the_marker_holding_the_name(tmp_path):
    path = tmp_path / "_run.started.json"
    theirs = outputs.run_marker("crawl", OTHER)
    path.write_text(json.dumps(theirs))
    assert outputs.write_marker(str(path), outputs.run_marker("crawl")) == theirs
    assert json.loads(path.read_text()) == theirs  # untouched
    assert os.listdir(tmp_path) == [path.name]


def test_write_marker_takes_an_unreadable_marker_for_a_taken_name(tmp_path):
    path = tmp_path / "_run.started.json"
    path.write_text("not json")
    assert outputs.write_marker(str(path), outputs.run_marker("crawl")) == {}
    assert path.read_text() == "not json"


def test_write_marker_without_hard_links_creates_the_name_exclusively(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "_run.started.json"
    marker = outputs.run_marker("filter")
    assert outputs.write_marker(str(path), marker) is None
    assert json.loads(path.read_text()) == marker
    theirs = outputs.run_marker("filter", OTHER)
    path.write_text(json.dumps(theirs))
    assert outputs.write_marker(str(path), marker) == theirs


def test_read_local_marker_reads_json_objects_only(tmp_path):
    path = tmp_path / "marker.json"
    assert outputs.read_local_marker(str(path)) is None
    path.write_text("[1, 2]")
    assert outputs.read_local_marker(str(path)) is None
    path.write_text('{"pid": 7}')
    assert outputs.read_local_marker(str(path)) == {"pid": 7}


def test_running_run_problem_words_a_run_of_this_host():
    marker = outputs.run_marker("crawl", OTHER)
    running = outputs.run_in_progress(marker)
    problem = outputs.running_run_problem("out", marker, "a crawl run", "remove out/m", option="--out")
    assert problem == (f"out is in use by a crawl run still going ({running}); wait for it to end or stop it, or use "
                       f"a new --out")
    noted = outputs.running_run_problem("out", marker, "an import", "pass --overwrite", overwrite=True,
                                        overwrite_note="--overwrite never removes a running import")
    assert noted == (f"out is in use by an import still going ({running}); wait for it to end or stop it, or use a "
                     f"new --output (--overwrite never removes a running import)")


def test_running_run_problem_words_a_run_of_another_host_unless_overwrite():
    marker = dict(outputs.run_marker("filter", OTHER), host=socket.gethostname() + "-elsewhere")
    running = outputs.run_in_progress(marker)
    problem = outputs.running_run_problem("out", marker, "a filter run", "remove out/m")
    assert problem == (f"out holds a filter run started on another host ({running}), which cannot be checked from "
                       f"here; use a new --output, or, if it has ended, remove out/m")
    assert outputs.running_run_problem("out", marker, "a filter run", "remove out/m", overwrite=True) is None


def test_running_run_problem_is_none_for_no_run():
    assert outputs.running_run_problem("out", None, "a crawl run", "remove out/m") is None
    ended = outputs.run_marker("crawl", os.getpid())  # this very process: an earlier run of it has returned
    assert outputs.running_run_problem("out", ended, "a crawl run", "remove out/m") is None


def test_marker_taken_problem_names_the_run_or_its_marker():
    marker = outputs.run_marker("crawl", OTHER)
    assert outputs.marker_taken_problem("out", marker, "out/m", "a crawl run", "-s LAIT_OUT") == (
        f"out is in use by a crawl run that started there just now ({outputs.run_in_progress(marker)}); use a new "
        f"-s LAIT_OUT")
    assert outputs.marker_taken_problem("out", {}, "out/m", "a features run") == (
        "out is in use by a features run that started there just now (its marker: out/m); use a new --output")


def test_a_crawl_claim_reads_and_writes_its_marker_without_beam(tmp_path):
    """A crawl process never imports Beam: the shared pieces it uses import it for URLs alone."""
    out = tmp_path / "crawl"
    code = textwrap.dedent(f"""
        import sys
        from crawler import output
        output.claim({str(out)!r})
        assert output.read_run_marker({str(out)!r})["pid"] > 0
        output.release({str(out)!r})
        assert "apache_beam" not in sys.modules, "Beam imported"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
    assert not (out / outputs.RUN_MARKER).exists()
