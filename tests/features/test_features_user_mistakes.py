"""``lait features`` (and ``python -m pipeline.features``) against what users do to their folders: files deleted
between runs, run.json removed, outputs inside other runs, devices it does not run on, blank image ids."""
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from lait import cli
from tests.features.scenes import encode, make_scene, write_pairs

FAST = ["--detector", "demo", "--random-init", "--num-workers", "0", "--no-progress", "--min-size", "32",
        "--max-size", "48", "--fixed-boxes", "2", "--score-thresh", "0"]
BEAM = ["--detector", "demo", "--random-init", "--runner=DirectRunner", "--direct_running_mode=in_memory",
        "--direct_num_workers=1"]


def _features(input_dir, output_dir, *extra) -> int:
    return cli.main(["features", "--input", str(input_dir), "--output", str(output_dir), *FAST, *extra])


def _one_line(capsys, prefix="lait features: error: ") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix) and "Traceback" not in err[0], err
    return err[0]


def _on_disk(out) -> tuple[list[str], list[str]]:
    """The image ids in regions/ and in the shards' rejected/ files (not the rows without an id)."""
    regions = schemas.read_table(str(out / "regions"), "regions").column("image_id").to_pylist()
    rejected = sorted((out / "rejected").glob("part-*.parquet"))
    ids = [i for f in rejected for i in pq.read_table(f, columns=["image_id"]).column(0).to_pylist()]
    return sorted(regions), sorted(ids)


def test_a_shard_whose_files_were_deleted_is_computed_again(tmp_path, capsys):
    """A shard counts as done only when the files its stats count are there with as many rows: a regions/ or
    rejected/ file deleted (or the whole regions/) is computed again, and the rerun equals an uninterrupted one."""
    images = [encode(make_scene(i, (40, 32))[0]) for i in range(9)] + [b"not an image"]
    write_pairs(tmp_path / "in", images, duplicate_first=False)
    out = tmp_path / "out"
    assert _features(tmp_path / "in", out, "--images-per-shard", "3") == 0
    first = json.loads((out / "stats.json").read_text())
    whole = _on_disk(out)
    assert (first["in"], len(whole[0]) + len(whole[1])) == (10, 10) and len(whole[1]) == 1
    rejected_shard = next((out / "rejected").glob("part-*.parquet")).name
    for damage in (lambda: os.remove(out / "regions" / "part-00001.parquet"),
                   lambda: os.remove(out / "rejected" / rejected_shard),
                   lambda: shutil.rmtree(out / "regions")):
        damage()
        capsys.readouterr()
        assert _features(tmp_path / "in", out, "--images-per-shard", "3") == 0
        stats = json.loads((out / "stats.json").read_text())
        assert (stats["in"], stats["kept"], stats["rejected"]) == (first["in"], first["kept"], first["rejected"])
        assert stats["shards_resumed"] < stats["shards"]
        assert _on_disk(out) == whole


def test_a_resume_without_run_json_is_refused(tmp_path, capsys):
    """Finished shards without run.json: their settings are unknown, and another part could add others."""
    write_pairs(tmp_path / "in", [encode(make_scene(i, (40, 32))[0]) for i in range(4)], duplicate_first=False)
    out = tmp_path / "out"
    assert _features(tmp_path / "in", out, "--images-per-shard", "1", "--part", "0/2") == 0
    os.remove(out / "run.json")
    shards = sorted(os.listdir(out / "shards"))
    capsys.readouterr()
    assert _features(tmp_path / "in", out, "--images-per-shard", "1", "--part", "1/2", "--topk", "3") == 2
    line = _one_line(capsys)
    assert "finished shards but no run.json" in line and "new --output" in line
    assert sorted(os.listdir(out / "shards")) == shards and not (out / "run.json").exists()


def test_an_output_inside_another_runs_dataset_is_refused_in_both_forms(tmp_path, capsys):
    """--output in another stage's dataset (a folder of Parquet files) or below one; beside a finished stage's
    datasets is fine (the import layout, tests/demo/test_import_layout.py)."""
    from pipeline.features import main as beam_main

    write_pairs(tmp_path / "in", [encode(make_scene(0, (40, 32))[0])])
    write_pairs(tmp_path / "run" / "filter", [encode(make_scene(1, (40, 32))[0])])
    (tmp_path / "run" / "filter" / "stats.json").write_text(json.dumps({"stage": "filter", "in": 2, "kept": 2}))
    before = sorted(p.name for p in (tmp_path / "run" / "filter" / "pairs").iterdir())
    for output, message in ((tmp_path / "run" / "filter" / "pairs", "holds Parquet files (part-00000.parquet)"),
                            (tmp_path / "run" / "filter" / "pairs" / "features",
                             f"is inside {tmp_path / 'run' / 'filter' / 'pairs'}, which holds Parquet files")):
        assert _features(tmp_path / "in", output) == 2
        assert message in _one_line(capsys)
        assert beam_main(["--input", str(tmp_path / "in"), "--output", str(output), *BEAM]) == 2
        assert message in _one_line(capsys, "python -m pipeline.features: error: ")
    assert sorted(p.name for p in (tmp_path / "run" / "filter" / "pairs").iterdir()) == before
    assert not (tmp_path / "run" / "filter" / "pairs" / "features").exists()


def test_an_output_inside_a_single_file_or_file_url_input_is_refused(tmp_path, capsys):
    write_pairs(tmp_path / "in", [encode(make_scene(0, (40, 32))[0])])
    file = tmp_path / "in" / "pairs" / "part-00000.parquet"
    for given in (str(file), f"file://{tmp_path / 'in' / 'pairs'}"):
        assert _features(given, tmp_path / "in" / "pairs" / "features") == 2
        assert "is inside the input" in _one_line(capsys)
    assert not (tmp_path / "in" / "pairs" / "features").exists()


def test_a_device_lait_features_does_not_run_on_is_one_line_before_anything_is_written(tmp_path, capsys):
    """xpu, meta, lazy are torch devices, but the detector runs on auto, cpu, cuda or cuda:N only."""
    from pipeline.features import main as beam_main

    write_pairs(tmp_path / "in", [encode(make_scene(0, (40, 32))[0])])
    for device in ("xpu", "meta", "lazy", "cuda:x"):
        assert _features(tmp_path / "in", tmp_path / "out", "--device", device) == 2
        assert f"--device {device!r} is not a torch device lait features runs on" in _one_line(capsys)
        assert beam_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *BEAM,
                          "--device", device]) == 2
        assert f"--device {device!r}" in _one_line(capsys, "python -m pipeline.features: error: ")
        assert not (tmp_path / "out").exists(), device


def test_a_blank_image_id_is_a_missing_one_in_both_forms(tmp_path):
    """Rows with image_id "" or whitespace are image_id_missing rejects, not one image standing for them all."""
    from pipeline.features_beam import REJECTED, KeyRowsByImageFn

    data = encode(make_scene(0, (40, 32))[0])
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image_id": ["", "", " ", "x3"], "image_bytes": [data] * 4}),
                   tmp_path / "in" / "part-0.parquet")
    assert _features(tmp_path / "in", tmp_path / "out") == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert (stats["in"], stats["kept"] + stats["rejected"]) == (4, 4)
    assert stats["rejected_by_reason"].get("image_id_missing") == 3

    keyed = KeyRowsByImageFn(buckets=4)
    for blank in ("", "  "):
        (out,) = list(keyed.process({"image_id": blank, "image_bytes": data}))
        assert out.tag == REJECTED and out.value["reason"] == "image_id_missing"
    ((_, (image, _)),) = list(keyed.process({"image_id": "x3", "image_bytes": data}))
    assert image == "x3"


@pytest.mark.parametrize("edit", [lambda s: s.pop("kept"), lambda s: s.update(kept="3")])
def test_a_hand_edited_shard_stats_file_is_one_line_naming_it(tmp_path, capsys, edit):
    write_pairs(tmp_path / "in", [encode(make_scene(i, (40, 32))[0]) for i in range(2)], duplicate_first=False)
    out = tmp_path / "out"
    assert _features(tmp_path / "in", out) == 0
    path = out / "shards" / "part-00000.json"
    stats = json.loads(path.read_text())
    edit(stats)
    path.write_text(json.dumps(stats))
    capsys.readouterr()
    assert _features(tmp_path / "in", out) == 2
    line = _one_line(capsys)
    assert "shards/part-00000.json: 'kept' is" in line and "not a count" in line
