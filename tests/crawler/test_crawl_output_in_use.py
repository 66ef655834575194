"""A second crawl into a folder whose crawl run is still going. Two URL crawls numbered their shards from the same
free index and each renamed its shards over the other's (rows lost, the books counting rows no longer there); a
WARC run deleted the running run's shards and Beam temporary folders as a previous run's. A run still going is
refused now, before anything in the folder changes; the folder of a run whose process is gone is used as before.
"""
import io
import json
import os
import re
import socket

import pytest
from warcio.warcwriter import WARCWriter

import schemas
from crawler import output, runner, warc
from pipeline import outputs
from tests.crawler.mocksite import TEST_MIN_SIDE, html, jpeg
from tests.crawler.test_crawl_warc import _response

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times are read from /proc")


def _snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def _crawl_folder(folder, marker: dict, shard: str = "part-00000.parquet") -> dict:
    """What a crawl leaves while it runs: a candidates shard and its marker; returns the snapshot."""
    row = {"candidate_id": "c1", "image_id": "i1", "page_url": "http://h.example/p", "image_url": "http://h.example/a.jpg",
           "alt": "A running crawl's row", "image_bytes": b"x", "source": "crawl"}
    schemas.write_table(schemas.to_table([row], "candidates"), str(folder / "candidates" / shard), "candidates")
    (folder / output.RUN_MARKER).write_text(json.dumps(marker))
    return _snapshot(folder)


def test_a_url_crawl_into_a_folder_whose_crawl_is_still_going_is_refused(tmp_path, sleeper, capsys):
    from lait import cli

    out = tmp_path / "crawl"
    before = _crawl_folder(out, outputs.run_marker("crawl", pid=sleeper.pid))
    message = rf"{out} is in use by a crawl run still going \(pid {sleeper.pid} on host .*\); wait for it to end or stop it"
    with pytest.raises(output.OutputFolderError, match=message + r", or use a new --out$"):
        runner.run_crawl(["http://127.0.0.1:9/"], str(out))  # (refused before any crawl process starts)
    assert cli.main(["crawl", "http://127.0.0.1:9/", "--out", str(out), "--no-progress"]) == 2
    assert re.fullmatch(f"lait crawl: --out: {message}, or use a new --out\n", capsys.readouterr().err)
    with pytest.raises(output.OutputFolderError, match=message + r", or use a new -s LAIT_OUT$"):
        output.CrawlOutput(str(out))  # the native spider's writer
    assert _snapshot(out) == before
    elsewhere = dict(outputs.run_marker("crawl", pid=sleeper.pid), host="elsewhere.example")
    (out / output.RUN_MARKER).write_text(json.dumps(elsewhere))
    with pytest.raises(output.OutputFolderError, match=rf"started on another host .* remove {out / output.RUN_MARKER}$"):
        output.claim(str(out))

    # The process is gone: the folder is the rerun's, as before (the crawl's processes find `lait crawl`'s marker)
    (out / output.RUN_MARKER).write_text(json.dumps(outputs.run_marker("crawl", pid=sleeper.pid)))
    sleeper.kill()
    sleeper.wait()
    stats = runner.run_crawl(["http://127.0.0.1:9/"], str(out), overrides={"LOG_LEVEL": "ERROR"})
    assert (stats["kept"], stats["rejected_by_reason"]) == (1, {"private_network_refused": 1})  # the row kept too
    assert not (out / output.RUN_MARKER).exists()  # the run has ended: no marker left


def test_the_marker_names_the_run_and_goes_when_it_ends(tmp_path):
    out = tmp_path / "crawl"
    output.claim(str(out))
    marker = json.loads((out / output.RUN_MARKER).read_text())
    assert (marker["stage"], marker["pid"], marker["host"]) == ("crawl", os.getpid(), socket.gethostname())
    writer = output.CrawlOutput(str(out))  # the run's own writer (the parent's rows of unread inboxes)
    writer.close()
    assert json.loads((out / output.RUN_MARKER).read_text()) == marker
    output.write_stats(str(out))  # the run's last step
    assert sorted(os.listdir(out)) == ["stats.json"]  # no marker, no temporary file left


def _warc(folder) -> str:
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    _response(writer, "http://warc.example/a.html", html('<img src="/img/in.jpg" alt="A picture in the WARC">'),
              "text/html")
    _response(writer, "http://warc.example/img/in.jpg", jpeg(96, 72), "image/jpeg")
    path = folder / "a.warc.gz"
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_a_warc_run_into_a_folder_whose_run_is_still_going_is_refused(tmp_path, sleeper):
    out = tmp_path / "crawl"
    before = _crawl_folder(out, outputs.run_marker("crawl", pid=sleeper.pid), shard="warc-00000-of-00001.parquet")
    with pytest.raises(output.OutputFolderError, match=rf"{out} is in use by a crawl run still going \(pid "
                                                       rf"{sleeper.pid} on .*\); .* or use a new --out$"):
        warc.read_warcs([_warc(tmp_path)], str(out), download=False)
    with pytest.raises(output.OutputFolderError, match=r"or use a new --output$"):  # (python -m crawler.warc)
        warc.run([f"--input={_warc(tmp_path)}", f"--output={out}", "--no_download"])
    assert _snapshot(out) == before  # its shards were deleted as a previous run's


def test_a_warc_run_replaces_the_output_of_a_run_whose_process_is_gone(tmp_path, sleeper):
    out = tmp_path / "crawl"
    _crawl_folder(out, outputs.run_marker("crawl", pid=sleeper.pid), shard="warc-00000-of-00001.parquet")
    sleeper.kill()
    sleeper.wait()
    stats = warc.read_warcs([_warc(tmp_path)], str(out), download=False, min_side=TEST_MIN_SIDE)
    alts = schemas.read_table(str(out / "candidates"), "candidates").column("alt").to_pylist()
    assert stats["kept"] == 1 and alts == ["A picture in the WARC"]  # the killed run's shard went, as before
    assert sorted(os.listdir(out)) == ["candidates", "rejected", "stats.json"]
