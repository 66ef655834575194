"""The WARC reader on odd input: a record without WARC-Target-URI, paths holding ``[``, ``*`` or ``?``, and
options it would drop or fail on."""
import io
import json
import os
import subprocess
import sys

import pytest
from apache_beam.pvalue import TaggedOutput
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import schemas
from crawler import warc
from tests.crawler.mocksite import TEST_MIN_SIDE, html, jpeg
from tests.crawler.test_crawl_warc import _response

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _without_uri(writer: WARCWriter, url: str, body: bytes) -> None:
    """A response record whose WARC-Target-URI is removed (some crawlers write none)."""
    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
    record = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
    record.rec_headers.remove_header("WARC-Target-URI")
    writer.write_record(record)


def _warc_with_a_record_without_uri(path, gzip: bool = True) -> None:
    """A page, a response without WARC-Target-URI, then a page with an image and the image."""
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=gzip)
        _response(writer, "http://warc.example/a.html", html("<p>before</p>"), "text/html")
        _without_uri(writer, "http://warc.example/lost.html", html('<img src="/b.jpg" alt="Never read">'))
        _response(writer, "http://warc.example/b.html", html('<img src="/b.jpg" alt="A blue picture after it">'),
                  "text/html")
        _response(writer, "http://warc.example/b.jpg", jpeg(96, 72, color=(10, 10, 200)), "image/jpeg")


def _read(path) -> tuple[list, list]:
    """ReadWarcRecords called directly: (kind, url) of the records read, and the reject rows."""
    outputs = list(warc.ReadWarcRecords(max_bytes=1_000_000).process(str(path)))
    return ([(kind, url) for kind, url, _ in (o for o in outputs if not isinstance(o, TaggedOutput))],
            [o.value for o in outputs if isinstance(o, TaggedOutput)])


READ_AROUND = [("page", "http://warc.example/a.html"), ("page", "http://warc.example/b.html"),
               ("image", "http://warc.example/b.jpg")]


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "uncompressed"])
def test_a_response_without_target_uri_is_a_malformed_record_and_the_records_after_it_are_read(tmp_path, gzip):
    path = tmp_path / ("nouri.warc.gz" if gzip else "nouri.warc")
    _warc_with_a_record_without_uri(path, gzip)
    kept, rejected = _read(path)
    assert kept == READ_AROUND
    assert [(r["reason"], r.get("page_url"), r.get("image_url")) for r in rejected] == [
        ("warc_malformed_record", None, None)]
    assert "record without a URL" in rejected[0]["detail"] and str(path) in rejected[0]["detail"]


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "uncompressed"])
def test_a_response_over_http2_is_read_as_warcio_reads_it(tmp_path, gzip):
    """Browser-based crawlers write the status line ``HTTP/2 200``: read as before, and so is what follows it."""
    path = tmp_path / ("h2.warc.gz" if gzip else "h2.warc")
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=gzip)
        headers = StatusAndHeaders("200", [("Content-Type", "text/html")], protocol="HTTP/2")
        writer.write_record(writer.create_warc_record("http://warc.example/a.html", "response", http_headers=headers,
                                                      payload=io.BytesIO(html("<p>over HTTP/2</p>"))))
        _response(writer, "http://warc.example/b.html", html("<p>after it</p>"), "text/html")
    kept, rejected = _read(path)
    assert kept == [("page", "http://warc.example/a.html"), ("page", "http://warc.example/b.html")] and rejected == []


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "uncompressed"])
def test_warcio_failing_inside_a_file_is_a_counted_reject_not_a_crash(tmp_path, monkeypatch, gzip):
    """warcio's own loader on the same file: it raises in the middle of the iteration. A gzipped file is read on
    from the next member; an uncompressed one has none, and its one reject says the rest was not read."""
    from warcio.archiveiterator import ArchiveIterator

    monkeypatch.setattr(warc, "_archive_iterator", lambda handle: ArchiveIterator(handle, check_digests=True,
                                                                                 arc2warc=True))
    path = tmp_path / ("nouri.warc.gz" if gzip else "nouri.warc")
    _warc_with_a_record_without_uri(path, gzip)
    kept, rejected = _read(path)
    assert [r["reason"] for r in rejected] == ["warc_malformed_record"]
    assert "AttributeError" in rejected[0]["detail"]
    if gzip:
        assert kept == READ_AROUND
    else:
        assert kept == READ_AROUND[:1]
        assert f"(the last {path.stat().st_size - rejected_offset(rejected[0])} bytes, not read on)" in rejected[0]["detail"]


def rejected_offset(row) -> int:
    """The byte offset a reject's detail names (``path@offset...``)."""
    return int(row["detail"].split("@", 1)[1].split(" ", 1)[0].rstrip(":"))


def test_lait_crawl_warc_reads_a_file_under_a_folder_named_with_brackets_past_a_record_without_uri(tmp_path):
    folder = tmp_path / "w [1]"
    folder.mkdir()
    path = folder / "good.warc.gz"
    _warc_with_a_record_without_uri(path)
    out = tmp_path / "out"
    for given in (path, folder):  # the file, and the folder standing for the WARC files in it
        result = subprocess.run([sys.executable, "-m", "lait", "crawl", "--warc", str(given), "--out", str(out),
                                 "--no-download", "--min-side", str(TEST_MIN_SIDE)],
                                env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=180)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr[-3000:]
        candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
        assert [(c["page_url"], c["alt"]) for c in candidates] == [("http://warc.example/b.html",
                                                                    "A blue picture after it")]
        rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
        assert [r["reason"] for r in rejected] == ["warc_malformed_record"]
        stats = json.loads((out / "stats.json").read_text())
        assert (stats["in"], stats["kept"], stats["rejected"]) == (2, 1, 1)


def test_an_input_that_exists_is_that_file_and_only_a_missing_one_is_a_pattern(tmp_path):
    for name in ("w [1]", "w 1", "w *", "w ?"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.warc.gz").write_bytes(b"")
    for name in ("w [1]", "w *", "w ?"):
        literal = str(tmp_path / name / "a.warc.gz")
        assert warc._expand_inputs([literal]) == [literal]
        assert warc._expand_inputs([str(tmp_path / name)]) == [literal]  # a folder stands for its files
    assert warc._expand_inputs([str(tmp_path / "w [0-9]" / "a.warc.gz")]) == [str(tmp_path / "w 1" / "a.warc.gz")]
    with pytest.raises(warc.MissingInputError, match=r"no such file: .*w \[2\]"):
        warc._expand_inputs([str(tmp_path / "w [2]" / "a.warc.gz")])


def test_an_object_store_input_that_exists_is_that_file_or_folder(object_store):
    for name in ("w [1]", "w 1", "w ]1]"):
        (object_store / name).mkdir()
        (object_store / name / "a.warc.gz").write_bytes(b"")
    assert warc._expand_inputs(["laitobj://w [1]/a.warc.gz"]) == ["laitobj://w [1]/a.warc.gz"]
    assert warc._expand_inputs(["laitobj://w [1]"]) == ["laitobj://w [1]/a.warc.gz"]
    assert warc._expand_inputs(["laitobj://w [0-9]/a.warc.gz"]) == ["laitobj://w 1/a.warc.gz"]


def test_a_rerun_into_a_folder_named_with_brackets_finds_and_clears_its_previous_output(tmp_path):
    """The output's own shards and stats.json are found by name, not matched as a pattern (``o [1]`` is no
    ``o 1``), and never another folder's."""
    rows = {"candidates": [], "rejected": [schemas.rejected_row("crawl", "warc_malformed_record", "x")]}
    for name in ("o [1]", "o 1"):
        for sub, kind in (("candidates", "candidates"), ("rejected", "rejected")):
            schemas.write_table(schemas.to_table(rows[kind], kind), str(tmp_path / name / sub / "warc-00000-of-00001.parquet"),
                                kind)
        (tmp_path / name / "stats.json").write_text("{}")
    out, other = str(tmp_path / "o [1]"), tmp_path / "o 1"
    assert warc._has_warc_output(out)
    assert warc._part_rows(out, warc.PREFIX) == {"candidates": 0, "candidates_shards": ["warc-00000-of-00001.parquet"],
                                                 "rejected": 1, "rejected_shards": ["warc-00000-of-00001.parquet"]}
    warc._clear_previous(out)
    assert not warc._has_warc_output(out)
    assert sorted(p.name for p in other.rglob("*") if p.is_file()) == ["stats.json", "warc-00000-of-00001.parquet",
                                                                      "warc-00000-of-00001.parquet"]


def test_the_warc_reader_writes_into_a_folder_named_with_brackets(tmp_path):
    path = tmp_path / "a.warc.gz"
    _warc_with_a_record_without_uri(path)
    stats = warc.run(["--input", str(path), "--output", str(tmp_path / "o [1]"), "--no_download",
                      "--min_side", str(TEST_MIN_SIDE), "--runner", "DirectRunner"])
    assert (stats["in"], stats["kept"], stats["rejected"]) == (2, 1, 1)
    assert list((tmp_path / "o [1]").rglob("beam-temp-*")) == []  # Beam's temporary folders removed too


@pytest.mark.parametrize("args, message", [
    # Before: dropped with a logged warning from Beam ("Discarding unparseable args"), the run went on without it.
    (["--minside", "64"], "unknown argument(s) --minside 64: neither an option of this stage nor a Beam option"),
    # Before: taken (no delay at all; every download timing out at once; every record too_large).
    (["--download_delay", "-1"], "--download_delay must be a number of seconds, 0 or more, got -1.0"),
    (["--download_timeout", "0"], "--download_timeout must be a number of seconds above 0, got 0.0"),
    (["--download_timeout", "nan"], "--download_timeout must be a number of seconds above 0, got nan"),
    (["--max_bytes", "0"], "--max_bytes must be a whole number of bytes, 1 or more, got 0"),
    # Before: found once the previous output was cleared (Beam's usage text, a traceback).
    (["--direct_running_mode", "bogus"], "Beam options: argument --direct_running_mode: invalid choice: 'bogus'"),
    (["--runner", "Bogus"], "--runner: Unexpected pipeline runner: Bogus."),
])
def test_the_native_reader_refuses_an_option_it_would_drop_or_fail_on_before_the_output_is_touched(
        tmp_path, capsys, args, message):
    path = tmp_path / "a.warc.gz"
    _warc_with_a_record_without_uri(path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text("{}")  # a previous run's
    with pytest.raises(SystemExit) as exit_:
        warc.run(["--input", str(path), "--output", str(out), "--no_download", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"error: {message}" in err and "Traceback" not in err, err
    assert (out / "stats.json").read_text() == "{}"


def test_a_setting_value_that_starts_with_a_dash_reaches_the_reader_as_a_value(tmp_path):
    """`lait crawl --warc -s USER_AGENT=-MyLab/1.0` handed the reader `--user_agent -MyLab/1.0`, which its parser
    took for an option (a usage text and exit status 2); each option now goes as one `--name=value` argument."""
    path = tmp_path / "a.warc.gz"
    _warc_with_a_record_without_uri(path)
    stats = warc.read_warcs([str(path)], str(tmp_path / "out"), download=False,
                            settings={"USER_AGENT": "-MyLab/1.0"})
    assert stats["source"] == "warc" and stats["in"] == stats["kept"] + stats["rejected"]
