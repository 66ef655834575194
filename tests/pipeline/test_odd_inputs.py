"""Inputs the stages must take as they are: a crawl that kept nothing, and paths holding ``[``, ``*`` or ``?``."""
import json
import shutil

import pytest

import schemas
from crawler import output
from filters.synthetic import make_candidates
from pipeline import features
from pipeline import filter as filter_stage
from tests.crawler.mocksite import HTML, JPEG, TEST_SETTINGS, MockSite, html, jpeg
from tests.inprocess import lait_crawl_here


def _write_candidates(folder, rows):
    with schemas.ShardWriter(str(folder / "candidates"), "candidates") as writer:
        writer.write_many(rows)
    return folder


def _finished_crawl_without_candidates(folder):
    """A crawl folder as crawls that kept nothing wrote it before: rejected/ and stats.json, no candidates/."""
    row = schemas.rejected_row("crawl", "image_too_small", "300x200", page_url="http://127.0.0.1/p0.html",
                               image_url="http://127.0.0.1/img/0.jpg", candidate_id="c0")
    schemas.write_table(schemas.to_table([row], "rejected"), str(folder / "rejected" / "part-00000.parquet"), "rejected")
    (folder / "stats.json").write_text(json.dumps({"stage": "crawl", "in": 1, "kept": 0, "rejected": 1}))
    return folder


def _filter(input_path, output_path):
    return filter_stage.run(["--input", str(input_path), "--output", str(output_path), "--runner", "DirectRunner"])


# ---------------------------------------------------------------------------------------------- empty crawls

def test_a_crawl_that_keeps_nothing_has_an_empty_candidates_dataset_and_filters_to_an_empty_run(tmp_path):
    pages = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")}
    for i in range(3):  # 300x200 images: under the default --min-side 300, so nothing is kept
        link = f'<a href="/p{i + 1}.html">next</a>' if i < 2 else ""
        pages[f"/p{i}.html"] = (200, HTML, html(f'<img src="/img/{i}.jpg" alt="A red picture number {i}">{link}'))
        pages[f"/img/{i}.jpg"] = (200, JPEG, jpeg(300, 200, color=(50 * i, 20, 20)))
    crawl = tmp_path / "r1" / "crawl"
    with MockSite(pages) as site:
        for _ in range(2):  # a rerun into the same folder writes nothing twice and keeps its books
            # in this process (cli.main, as `python -m lait crawl` runs it): the crawl's own process still starts
            lait_crawl_here(site.url + "/p0.html", "--out", str(crawl), "--allow-private-networks",
                            settings=TEST_SETTINGS)
            stats = json.loads((crawl / "stats.json").read_text())
            assert (stats["in"], stats["kept"], stats["rejected"]) == (3, 0, 3)
            assert stats["rejected_by_reason"] == {"image_too_small": 3}
            assert schemas.list_parquet_files(str(crawl / "candidates")) == [str(crawl / "candidates" / output.EMPTY_SHARD)]
            assert schemas.read_table(str(crawl / "candidates"), "candidates").num_rows == 0
            assert schemas.count_rows(str(crawl / "rejected"), "rejected") == 3
    assert features.resolve_input(str(crawl)) == f"{crawl}/candidates"
    filtered = _filter(crawl, tmp_path / "r1" / "filter")
    assert (filtered["in"], filtered["kept"], filtered["rejected"]) == (0, 0, 0)


def test_an_empty_shard_is_added_only_to_a_crawl_folder_without_candidate_shards(tmp_path):
    crawl = tmp_path / "crawl"
    assert output.ensure_candidates(str(crawl)) == str(crawl / "candidates" / output.EMPTY_SHARD)
    assert output.ensure_candidates(str(crawl)) is None  # once
    with schemas.ShardWriter(str(crawl / "candidates"), "candidates") as writer:  # a resumed crawl keeps one
        writer.write_many(make_candidates(1, seed=1))
    assert sorted(p.name for p in (crawl / "candidates").iterdir()) == ["part-00000.parquet", output.EMPTY_SHARD]
    assert schemas.count_rows(str(crawl / "candidates"), "candidates") == 1
    kept = _write_candidates(tmp_path / "kept", make_candidates(2, seed=1))
    assert output.ensure_candidates(str(kept)) is None
    assert [p.name for p in (kept / "candidates").iterdir()] == ["part-00000.parquet"]


def test_an_older_crawl_folder_without_candidates_is_an_empty_filter_run_and_an_empty_features_input(tmp_path):
    crawl = _finished_crawl_without_candidates(tmp_path / "old" / "crawl")
    assert filter_stage.input_root(str(crawl)) == f"{crawl}/candidates"
    assert filter_stage.resolve_input(str(crawl)) == []  # never rejected/ taken for candidates
    stats = _filter(crawl, tmp_path / "old" / "filter")
    assert (stats["in"], stats["kept"], stats["rejected"]) == (0, 0, 0)
    assert features.resolve_input(str(crawl)) == f"{crawl}/candidates"  # never rejected/ read as images
    assert features.input_files(f"{crawl}/candidates") == []
    # A crawl whose stats.json counts kept candidates has lost its candidates/: an error, not an empty run.
    (crawl / "stats.json").write_text(json.dumps({"stage": "crawl", "in": 3, "kept": 2, "rejected": 1}))
    with pytest.raises(FileNotFoundError, match="its stats.json counts 2 kept candidates"):
        features.resolve_input(str(crawl))
    with pytest.raises(FileNotFoundError, match="counts 2 kept candidates, but .*candidates holds no candidate"):
        filter_stage.resolve_input(str(crawl))  # before: an empty run, the lost candidates never mentioned
    (crawl / "candidates").mkdir()  # an empty candidates/ that should hold them is the same loss
    with pytest.raises(FileNotFoundError, match="counts 2 kept candidates"):
        filter_stage.resolve_input(str(crawl))
    (crawl / "candidates").rmdir()
    # Without stats.json (a crawl that did not finish) it is no dataset of candidates either: a clear error.
    (crawl / "stats.json").unlink()
    with pytest.raises(FileNotFoundError, match="holds rejected/ but neither candidates/ nor the stats.json"):
        filter_stage.resolve_input(str(crawl))
    with pytest.raises(FileNotFoundError, match=r"a run folder \(it holds rejected/\), not a dataset of images"):
        features.resolve_input(str(crawl))


# ---------------------------------------------------------------------------------------------- odd paths

@pytest.mark.parametrize("name", ["r7 [v2]", "r8 *", "r9 ?"])
def test_a_path_that_exists_is_read_as_written_never_as_a_pattern(tmp_path, name):
    crawl = _write_candidates(tmp_path / name / "crawl", make_candidates(4, seed=2))
    decoy = _write_candidates(tmp_path / "r7 v" / "crawl", make_candidates(3, seed=5))  # what "r7 [v2]" would match
    expected = [str(crawl / "candidates" / "part-00000.parquet")]
    for given in (crawl, crawl / "candidates", crawl / "candidates" / "part-00000.parquet"):
        assert filter_stage.input_root(str(given)) == (f"{crawl}/candidates" if given == crawl else str(given))
        assert filter_stage.resolve_input(str(given)) == expected
    assert features.resolve_input(str(crawl)) == f"{crawl}/candidates"
    # A path that does not exist is a pattern of files, as before.
    assert filter_stage.resolve_input(str(tmp_path / "r7 [v]" / "crawl" / "candidates" / "*.parquet")) == \
        [str(decoy / "candidates" / "part-00000.parquet")]
    assert len(filter_stage.resolve_input(str(tmp_path / "r*" / "crawl" / "candidates" / "*.parquet"))) == 2


@pytest.fixture(scope="module")
def bracket_run(tmp_path_factory):
    """One filter run of a crawl under "r7 [v2]/", written beside it (ROOT/r7 [v2]/filter), with another crawl under
    "r7 v/" (what the name read as a pattern would match): the tests below read it, or copy it to change it."""
    root = tmp_path_factory.mktemp("brackets")
    crawl = _write_candidates(root / "r7 [v2]" / "crawl", make_candidates(6, seed=3))
    _write_candidates(root / "r7 v" / "crawl", make_candidates(9, seed=4))
    return root, _filter(crawl, root / "r7 [v2]" / "filter")


def test_the_filter_reads_a_crawl_under_a_folder_named_with_brackets(bracket_run):
    _, stats = bracket_run
    assert stats["in"] == 6 and stats["in"] == stats["kept"] + stats["rejected"]


def test_a_crawl_on_an_object_store_under_a_name_with_brackets_is_read_as_written(object_store):
    crawl = _write_candidates(object_store / "r7 [v2]" / "crawl", make_candidates(2, seed=6))
    for decoy in ("r7 v", "r7 ]v2]"):  # what the name read as a pattern, or loosely quoted, would match
        _write_candidates(object_store / decoy / "crawl", make_candidates(2, seed=7))
    assert filter_stage.resolve_input("laitobj://r7 [v2]/crawl") == ["laitobj://r7 [v2]/crawl/candidates/part-00000.parquet"]
    shutil.rmtree(crawl / "candidates")  # an empty crawl there: no candidates/ object at all, only its stats
    _finished_crawl_without_candidates(crawl)
    assert filter_stage.resolve_input("laitobj://r7 [v2]/crawl") == []


def test_the_filter_writes_into_a_folder_named_with_brackets(bracket_run):
    root, stats = bracket_run
    assert stats["in"] == 6
    assert schemas.count_rows(str(root / "r7 [v2]" / "filter" / "pairs")) == stats["kept"]
    # Beam's temporary folders are gone too (Beam deletes them by pattern, which such a name is no match for).
    assert sorted(p.name for p in root.rglob("beam-temp-*")) == []


def test_the_filter_overwrites_its_run_in_a_folder_named_with_brackets_and_no_other(bracket_run, tmp_path):
    root, first = bracket_run
    shutil.copytree(root / "r7 [v2]", tmp_path / "r7 [v2]")  # the shared run, to overwrite here
    crawl, output = tmp_path / "r7 [v2]" / "crawl", tmp_path / "r7 [v2]" / "filter"
    decoys = [tmp_path / name / "filter" for name in ("r7 v", "r7 ]v2]")]  # what the name as a pattern would match
    for decoy in decoys:
        shutil.copytree(output, decoy)
    again = filter_stage.run(["--input", str(crawl), "--output", str(output), "--runner", "DirectRunner", "--overwrite"])
    assert (again["in"], again["kept"], again["rejected"]) == (first["in"], first["kept"], first["rejected"])
    assert schemas.count_rows(str(output / "pairs")) == again["kept"]
    for decoy in decoys:
        assert sorted(p.relative_to(decoy) for p in decoy.rglob("*")) == sorted(p.relative_to(output)
                                                                                for p in output.rglob("*"))


def test_the_filter_clears_only_its_own_interrupted_run_and_refuses_other_datasets_in_its_output(tmp_path):
    """An output folder with pairs/ but no stats.json was taken for an interrupted run's and deleted: a demo's
    held-out test/ split, or pairs another tool wrote, were lost. Only a folder whose run marker says this
    stage started there is cleared; others are refused (--overwrite removes them)."""
    from pipeline.outputs import RUN_MARKER, OutputExistsError

    crawl = _write_candidates(tmp_path / "crawl", make_candidates(6, seed=3))
    foreign = tmp_path / "test"
    _write_candidates(foreign, make_candidates(4, seed=5))
    shutil.copytree(foreign / "candidates", foreign / "pairs")  # what another tool left: no stats.json, no marker
    with pytest.raises(OutputExistsError, match=f"no filter run, finished or interrupted .*{RUN_MARKER}.*--overwrite"):
        _filter(crawl, foreign)
    assert schemas.count_rows(str(foreign / "pairs")) == 4 and not (foreign / RUN_MARKER).exists()
    stats = filter_stage.run(["--input", str(crawl), "--output", str(foreign), "--runner", "DirectRunner",
                              "--overwrite"])
    assert schemas.count_rows(str(foreign / "pairs")) == stats["kept"]
    assert not (foreign / RUN_MARKER).exists()  # a finished run keeps no marker
    # an interrupted run of the filter (its marker, its shards, no stats.json) is cleared by the rerun; the
    # finished run above, copied, stands for it (a run of its own would be the same files)
    interrupted = tmp_path / "filter"
    shutil.copytree(foreign, interrupted, ignore=shutil.ignore_patterns("candidates"))
    (interrupted / "stats.json").unlink()
    (interrupted / RUN_MARKER).write_text(json.dumps({"stage": "filter"}))
    again = _filter(crawl, interrupted)
    assert schemas.count_rows(str(interrupted / "pairs")) == again["kept"] == stats["kept"]


def test_the_parquet_sink_overrides_methods_beam_has():
    """pipeline.parquet_beam._Sink overrides private methods of Beam's file sink (an output folder named with
    "[" is looked up as written): a Beam that renamed them would silently glob such names again."""
    import inspect

    from apache_beam.io import filebasedsink

    from pipeline.parquet_beam import _Sink

    for name in ("_get_final_name_glob", "pre_finalize", "_check_state_for_finalize_write", "finalize_windowed_write",
                 "_get_final_name", "_report_sink_lineage"):
        assert callable(getattr(filebasedsink.FileBasedSink, name, None)), name
    ours = inspect.signature(_Sink._check_state_for_finalize_write).parameters
    beams = inspect.signature(filebasedsink.FileBasedSink._check_state_for_finalize_write).parameters
    assert list(ours)[:3] == list(beams)[:3]
