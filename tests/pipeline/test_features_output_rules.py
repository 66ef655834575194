"""``lait features`` and its Beam form (``python -m pipeline.features``) refuse the same outputs: one that holds the
input, one inside a finished stage's folder; and a ``--device`` lait features does not run on is the same one line
under torchrun as without it."""
import json
import os

import pytest

from lait import cli
from pipeline.features import main as beam_main
from tests.features.scenes import encode, make_scene, write_pairs

FAST = ["--detector", "demo", "--random-init", "--num-workers", "0", "--no-progress", "--min-size", "32",
        "--max-size", "48", "--fixed-boxes", "2", "--score-thresh", "0"]
BEAM = ["--detector", "demo", "--random-init", "--min-size", "32", "--max-size", "48", "--fixed-boxes", "2",
        "--score-thresh", "0", "--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
LOCAL_ERROR, BEAM_ERROR = "lait features: error: ", "python -m pipeline.features: error: "


def _listing(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix) and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("given", ["T", "T/pairs"])
def test_the_beam_form_refuses_an_output_that_holds_its_input(tmp_path, capsys, given):
    """--output T with the dataset T/pairs (given as T or as T/pairs): refused before anything is written, as the
    filter and relevance stages refuse theirs, not a run writing its folders around its own input."""
    write_pairs(tmp_path / "T", [encode(make_scene(0, (40, 32))[0])])
    before = _listing(tmp_path / "T")
    assert beam_main(["--input", str(tmp_path / given), "--output", str(tmp_path / "T"), *BEAM]) == 2
    line = _one_line(capsys, BEAM_ERROR)
    assert f"holds the input {tmp_path / 'T' / 'pairs'}" in line, line
    assert _listing(tmp_path / "T") == before


@pytest.mark.parametrize("given", ["T", "T/pairs"])
def test_the_local_form_refuses_an_output_that_holds_its_input(tmp_path, capsys, given):
    """The same for the local form: it refused an output inside its input, not one around it."""
    write_pairs(tmp_path / "T", [encode(make_scene(0, (40, 32))[0])])
    before = _listing(tmp_path / "T")
    assert cli.main(["features", "--input", str(tmp_path / given), "--output", str(tmp_path / "T"), *FAST]) == 2
    line = _one_line(capsys, LOCAL_ERROR)
    assert f"holds the input {tmp_path / 'T' / 'pairs'}" in line, line
    assert _listing(tmp_path / "T") == before


@pytest.fixture
def filter_run(tmp_path):
    """RUN/filter: a finished filter stage (pairs/ and its stats.json)."""
    filter_dir = tmp_path / "RUN" / "filter"
    write_pairs(filter_dir, [encode(make_scene(i, (40, 32))[0]) for i in range(2)], duplicate_first=False)
    (filter_dir / "stats.json").write_text(json.dumps({"stage": "filter", "in": 2, "kept": 2, "rejected": 0}))
    return filter_dir


@pytest.mark.parametrize("source", ["filter", "elsewhere"])
def test_both_forms_refuse_an_output_inside_a_finished_filter_stage(tmp_path, capsys, filter_run, source):
    """RUN/filter/features, read from RUN/filter or from another dataset, lies inside a finished filter stage's folder:
    both forms refuse it with the shared rule's line, and write nothing there."""
    if source == "elsewhere":
        write_pairs(tmp_path / "elsewhere", [encode(make_scene(5, (40, 32))[0])])
    source_dir = filter_run if source == "filter" else tmp_path / "elsewhere"
    output = filter_run / "features"
    before = _listing(filter_run)
    message = f"lies inside {filter_run}, the folder of a finished filter run"
    assert cli.main(["features", "--input", str(source_dir), "--output", str(output), *FAST]) == 2
    assert message in _one_line(capsys, LOCAL_ERROR)
    assert beam_main(["--input", str(source_dir), "--output", str(output), *BEAM]) == 2
    assert message in _one_line(capsys, BEAM_ERROR)
    assert not output.exists() and _listing(filter_run) == before


def test_the_local_form_still_writes_beside_a_finished_stage_and_in_the_import_layout(tmp_path, filter_run):
    """Neither rule refuses RUN/features (beside the filter) nor D/features in an import (D's stats.json names
    import_captions, whose folder holds the stages' folders by design)."""
    assert cli.main(["features", "--input", str(filter_run), "--output", str(tmp_path / "RUN" / "features"),
                     *FAST]) == 0
    imported = tmp_path / "D"
    write_pairs(imported, [encode(make_scene(3, (40, 32))[0])])
    (imported / "stats.json").write_text(json.dumps({"stage": "import_captions"}))
    assert cli.main(["features", "--input", str(imported), "--output", str(imported / "features"), *FAST]) == 0
    assert json.loads((imported / "features" / "stats.json").read_text())["kept"] == 1


@pytest.mark.parametrize("device", ["tpu", "xpu", "meta", "cuda:x"])
def test_a_bad_device_under_torchrun_is_the_one_line_it_is_without(tmp_path, capsys, monkeypatch, device):
    """Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) --device is checked before it is used to place the process:
    the same line, naming --device, as a run without torchrun gives, and nothing written."""
    write_pairs(tmp_path / "in", [encode(make_scene(0, (40, 32))[0])])
    argv = ["features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *FAST, "--device", device]
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(argv) == 2
    alone = _one_line(capsys, LOCAL_ERROR)
    assert f"--device {device!r} is not a torch device lait features runs on" in alone
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert cli.main(argv) == 2
    assert _one_line(capsys, LOCAL_ERROR) == alone
    assert not (tmp_path / "out").exists()
