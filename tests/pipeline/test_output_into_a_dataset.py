"""A stage's output folder that is a dataset, or lies inside a finished stage's folder, is refused before anything
is written (``pipeline.outputs.prepare_output``, shared by the filter, relevance scoring and Beam features)."""
import json
import os
import subprocess
import sys

import pytest

import schemas
from filters.synthetic import make_candidates
from pipeline import filter as filter_stage
from pipeline.outputs import OutputExistsError, prepare_output
from tests.pipeline.test_filter_e2e import ENV, ROOT, _write_crawl


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    _write_crawl(run / "crawl", make_candidates(8, seed=5))
    filter_stage.run(["--input", str(run / "crawl"), "--output", str(run / "filter"), "--runner", "DirectRunner"])
    return run


def test_lait_filter_into_a_finished_filter_runs_pairs_dataset_is_refused_and_writes_nothing(run_dir):
    pairs = run_dir / "filter" / "pairs"
    before = _listing(pairs)
    proc = subprocess.run([sys.executable, "-m", "lait", "filter", "--input", str(run_dir / "crawl"),
                           "--output", str(pairs), "--overwrite"],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "holds Parquet files" in errors[0] and "Traceback" not in proc.stderr
    assert _listing(pairs) == before  # no pairs/, rejected/, stats.json or run marker among the shards
    assert schemas.read_table(str(pairs), "pairs").num_rows == json.loads((run_dir / "filter" / "stats.json")
                                                                          .read_text())["kept"]


def test_a_new_folder_inside_a_finished_stage_folder_is_refused(run_dir):
    inside = run_dir / "filter" / "again"
    with pytest.raises(OutputExistsError, match=r"lies inside .*filter, the folder of a finished filter run"):
        prepare_output(str(inside), "filter", ("pairs", "rejected"), overwrite=True)
    assert not inside.exists()


def test_a_folder_deeper_inside_another_stages_finished_folder_is_refused(tmp_path):
    crawl = tmp_path / "crawl"
    (crawl / "candidates").mkdir(parents=True)
    (crawl / "stats.json").write_text(json.dumps({"stage": "crawl"}))
    with pytest.raises(OutputExistsError, match="finished crawl run"):
        prepare_output(str(crawl / "candidates" / "scored"), "relevance", ("pairs", "rejected"))
    assert os.listdir(crawl / "candidates") == []


def test_any_folder_of_parquet_files_is_refused_but_a_sibling_and_the_import_layout_are_not(tmp_path):
    data = tmp_path / "mine"
    data.mkdir()
    (data / "table.parquet").write_bytes(b"PAR1")
    with pytest.raises(OutputExistsError, match=r"holds Parquet files \(table.parquet\)"):
        prepare_output(str(data), "features", ("regions", "rejected"), overwrite=True)
    assert sorted(os.listdir(data)) == ["table.parquet"]
    prepare_output(str(tmp_path / "sibling"), "filter", ("pairs", "rejected"))  # beside it: fine
    # the import layout: lait import-captions --out D, then features into D/features
    imported = tmp_path / "D"
    imported.mkdir()
    (imported / "stats.json").write_text(json.dumps({"stage": "import_captions"}))
    prepare_output(str(imported / "features"), "features", ("regions", "rejected"))
