"""``lait features`` fixes: shards past 99,999 (six-digit names), empty or file --input/--output, shard fingerprints
of ids holding line breaks, and out-of-memory errors that arrive as plain RuntimeErrors."""
import hashlib
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import schemas
from pipeline import features
from tests.features.scenes import encode, make_scene, write_pairs
from tests.features.test_features_user_mistakes import BEAM, _features, _on_disk, _one_line

BEAM_ERROR = "python -m pipeline.features: error: "


def _images(path, ids: list[str], name: str = "data.parquet") -> None:
    """A dataset of ``image_id`` + ``image_bytes`` alone, one small image per id (file ``name``)."""
    data = [encode(make_scene(i, (40, 32))[0]) for i in range(len(ids))]
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_id": pa.array(ids, pa.string()), "image_bytes": pa.array(data, pa.binary())}),
                   str(path / name))


# ---- shards past 99,999 are named with six digits, and are the runner's own -------------------------------------

def test_a_six_digit_shard_the_runner_wrote_is_its_own_on_a_rerun(tmp_path, capsys):
    """``_shard_paths`` names shard 100,000 ``part-100000``: a rerun refused it as another run's file, so a run of
    more shards could never be resumed. A killed run's six-digit leftovers go like any other's; counts stay right."""
    result = features._ShardResult(images=1)
    result.rejected.append(schemas.rejected_row("features", "image_undecodable", "x", image_id="img-100000"))
    features._finish_shard(str(tmp_path / "alone"), features.Shard(100000, [], "h"), result, "demo", 256)
    assert os.listdir(tmp_path / "alone" / "rejected") == ["part-100000.parquet"]
    features._check_own_output(str(tmp_path / "alone"), str(tmp_path / "in"))  # not refused

    write_pairs(tmp_path / "in", [encode(make_scene(i, (40, 32))[0]) for i in range(3)], duplicate_first=False)
    out = tmp_path / "out"
    assert _features(tmp_path / "in", out, "--images-per-shard", "1") == 0
    first, whole = json.loads((out / "stats.json").read_text()), _on_disk(out)
    # what a killed run of shard 100,000 left: its data files, written before its stats file
    shutil.copy(out / "regions" / "part-00000.parquet", out / "regions" / "part-100000.parquet")
    capsys.readouterr()
    assert _features(tmp_path / "in", out, "--images-per-shard", "1") == 0, capsys.readouterr().err
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["in"], stats["kept"], stats["shards_resumed"]) == (first["in"], first["kept"], 3)
    assert _on_disk(out) == whole and not (out / "regions" / "part-100000.parquet").exists()

    # shards the input no longer makes are listed in shard order, not name order (part-100000 < part-99999)
    for index in (99999, 100000):
        shutil.copy(out / "shards" / "part-00000.json", features._shard_paths(str(out), index)["stats"])
    capsys.readouterr()
    assert _features(tmp_path / "in", out, "--images-per-shard", "1") == 2
    assert "holds shards part-99999.json, part-100000.json, but" in _one_line(capsys)


# ---- --input / --output: empty, a file ---------------------------------------------------------------------------

@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_input_or_output_is_one_line_in_both_forms_and_nothing_is_written(tmp_path, monkeypatch, capsys,
                                                                                  blank):
    """An unset $OUT in a script (``--output ""``) wrote the whole stage into the current folder."""
    write_pairs(tmp_path / "in", [encode(make_scene(0, (40, 32))[0])])
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    for given, option in (((tmp_path / "in", blank), "--output"), ((blank, tmp_path / "out"), "--input")):
        assert _features(*given) == 2
        assert f"{option} {blank!r} is empty" in _one_line(capsys)
        assert features.main(["--input", str(given[0]), "--output", str(given[1]), *BEAM]) == 2
        assert f"{option} {blank!r} is empty" in _one_line(capsys, BEAM_ERROR)
    assert os.listdir(here) == [] and not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_and_an_input_that_is_not_parquet_are_one_line_in_both_forms(tmp_path, capsys):
    write_pairs(tmp_path / "in", [encode(make_scene(0, (40, 32))[0])])
    (tmp_path / "afile").write_text("x")
    text = tmp_path / "notes.txt"
    text.write_text("not a table")
    cases = ((tmp_path / "in", tmp_path / "afile", f"--output {tmp_path / 'afile'} is a file, not a folder"),
             (tmp_path / "in", tmp_path / "afile" / "out", f"{tmp_path / 'afile'} is a file, not a folder"),
             (text, tmp_path / "out", f"--input {text} is neither a folder nor a Parquet file"),
             ("/dev/null", tmp_path / "out", "--input /dev/null is neither a folder nor a Parquet file"))
    for source, output, message in cases:
        assert _features(source, output) == 2
        assert message in _one_line(capsys)
        assert features.main(["--input", str(source), "--output", str(output), *BEAM]) == 2
        assert message in _one_line(capsys, BEAM_ERROR)
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["afile", "in", "notes.txt"]


# ---- shard fingerprints: ids holding line breaks -----------------------------------------------------------------

def test_ids_with_line_breaks_do_not_make_two_inputs_look_alike(tmp_path, capsys):
    """The fingerprint hashed each id followed by "\\n": ["a", "b"] and ["a\\nb"] matched, and a resume skipped the
    shard, keeping the regions of images the input no longer holds and never computing the new one."""
    _images(tmp_path / "one", ["a", "b"])
    _images(tmp_path / "two", ["a\nb"])
    assert features.plan_shards(str(tmp_path / "one"), 2)[0][0].images != \
        features.plan_shards(str(tmp_path / "two"), 2)[0][0].images
    _images(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    assert _features(tmp_path / "in", out, "--images-per-shard", "2") == 0
    _images(tmp_path / "in", ["a\nb"])  # the input now holds one other image
    capsys.readouterr()
    assert _features(tmp_path / "in", out, "--images-per-shard", "2") == 2
    assert "holds shard 0 of other images than" in _one_line(capsys)
    assert _on_disk(out)[0] == ["a", "b"]


def _older_run(tmp_path, ids: list[str]) -> tuple:
    """A finished run over ``ids`` whose shard stats file is rewritten in the older form (SHA-256 of id + "\\n")."""
    _images(tmp_path / "in", ids)
    out = tmp_path / "out"
    assert _features(tmp_path / "in", out, "--images-per-shard", "2") == 0
    path = out / "shards" / "part-00000.json"
    stats = json.loads(path.read_text())
    stats["images"] = hashlib.sha256(b"".join(i.encode() + b"\n" for i in ids)).hexdigest()
    path.write_text(json.dumps(stats))
    return out, path, stats


def test_a_shard_fingerprinted_by_an_older_run_of_the_same_images_resumes(tmp_path, capsys, monkeypatch):
    """A run folder of the older version still resumes: its shard of the same ids is skipped, not computed again."""
    out, path, stats = _older_run(tmp_path, ["a", "b"])
    before = {name: (out / "regions" / name).read_bytes() for name in os.listdir(out / "regions")}
    computed = []
    real = features.detect_splitting_on_oom
    monkeypatch.setattr(features, "detect_splitting_on_oom", lambda *a, **k: computed.append(1) or real(*a, **k))
    assert _features(tmp_path / "in", out, "--images-per-shard", "2") == 0
    assert computed == [] and json.loads(path.read_text()) == stats
    assert {name: (out / "regions" / name).read_bytes() for name in os.listdir(out / "regions")} == before
    assert _on_disk(out)[0] == ["a", "b"]


def test_a_shard_fingerprinted_by_an_older_run_is_refused_where_that_form_is_ambiguous(tmp_path, capsys):
    """The older form cannot tell ["a", "b"] from ["a\\nb"]: a shard of it is refused once an id holds a line break,
    and one of other images is refused as another input's; never skipped unchecked."""
    out, path, stats = _older_run(tmp_path, ["a", "b"])
    _images(tmp_path / "in", ["a\nb"])  # the older record matches this input too
    capsys.readouterr()
    assert _features(tmp_path / "in", out, "--images-per-shard", "2") == 2
    line = _one_line(capsys)
    assert "holds shard 0, written by an older lait features, of other images than" in line
    assert "use a new --output" in line
    _images(tmp_path / "in", ["a", "c"])
    assert _features(tmp_path / "in", out, "--images-per-shard", "2") == 2
    assert "holds shard 0, written by an older lait features" in _one_line(capsys)
    assert json.loads(path.read_text()) == stats and _on_disk(out)[0] == ["a", "b"]


def test_a_grown_shard_fingerprinted_by_an_older_run_is_computed_again(tmp_path, capsys):
    """Files added after an older run fill its last shard: computed again, as in a run of this version (the older
    form was checked for an exact match only, and the grown shard refused as one of other images)."""
    _images(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    assert _features(tmp_path / "in", out, "--images-per-shard", "2") == 0
    path = out / "shards" / "part-00000.json"
    stats = json.loads(path.read_text())
    stats["images"] = hashlib.sha256(b"a\n").hexdigest()  # what the older runner recorded for ["a"]
    path.write_text(json.dumps(stats))
    _images(tmp_path / "in", ["b"], name="more.parquet")
    assert _features(tmp_path / "in", out, "--images-per-shard", "2") == 0
    assert sorted(_on_disk(out)[0]) == ["a", "b"]
    assert json.loads(path.read_text())["images"].startswith(features.FINGERPRINT_PREFIX)


# ---- out of memory as a plain RuntimeError (cuDNN, cuBLAS, CUDA) -------------------------------------------------

class _FitsTwo:
    """A detector stand-in on a device that fits two images a batch, failing larger ones with ``error``."""

    device = torch.device("cpu")

    def __init__(self, error: str):
        self.error, self.batch_sizes = error, []

    def __call__(self, images, selection, topk):
        self.batch_sizes.append(len(images))
        if len(images) > 2:
            raise RuntimeError(self.error)
        return [float(image.sum()) for image in images]


@pytest.mark.parametrize("error", ["cuDNN error: CUDNN_STATUS_NOT_ENOUGH_MEMORY",
                                   "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                                   "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"])
def test_out_of_memory_as_a_runtime_error_splits_the_batch(error):
    images = [torch.full((3, 4, 4), float(i)) for i in range(5)]
    detector = _FitsTwo(error)
    assert features.detect_splitting_on_oom(detector, images, None, 1) == [48.0 * i for i in range(5)]
    assert detector.batch_sizes == [5, 2, 3, 1, 2]  # halves, and the half of 3 that failed halved again


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    detector = _FitsTwo("Expected all tensors to be on the same device")
    with pytest.raises(RuntimeError, match="same device"):
        features.detect_splitting_on_oom(detector, [torch.zeros(3, 4, 4)] * 3, None, 1)
    assert detector.batch_sizes == [3]
