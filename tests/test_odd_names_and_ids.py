"""Names that are not UTF-8 text inside a dataset (`lait inspect`) and as `lait relevance train --out`, and a COCO
captions file giving one image id to two files (`lait import-captions`)."""
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import schemas
from lait.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dataset_with_undecodable_names(folder) -> str:
    """A dataset folder holding good.parquet, ``b'\\xff.parquet'`` and ``b'sub\\xff/x.parquet'`` (one row each)."""
    os.mkdir(folder)
    folder = str(folder)
    good = os.path.join(folder, "good.parquet")
    pq.write_table(pa.table({"a": [1]}), good)
    data = open(good, "rb").read()
    with open(os.path.join(os.fsencode(folder), b"\xff.parquet"), "wb") as handle:
        handle.write(data)
    os.mkdir(os.path.join(os.fsencode(folder), b"sub\xff"))
    with open(os.path.join(os.fsencode(folder), b"sub\xff", b"x.parquet"), "wb") as handle:
        handle.write(data)
    return folder


def test_a_name_that_is_not_utf8_inside_a_dataset_is_refused_naming_it(tmp_path):
    """pyarrow names paths in UTF-8: the listing failed with a UnicodeDecodeError. It is one line naming the entry
    (leaving it out could leave its rows out)."""
    folder = _dataset_with_undecodable_names(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"holds 'sub\\xff', whose name is not UTF-8 text"):
        schemas.list_parquet_files(folder)


def test_lait_inspect_on_a_dataset_holding_a_name_that_is_not_utf8_is_one_line(tmp_path, capsys):
    folder = _dataset_with_undecodable_names(tmp_path / "ds")
    assert main(["inspect", folder, "--json"]) == 1
    captured = capsys.readouterr()
    assert "whose name is not UTF-8 text" in json.loads(captured.out)["error"], captured.out
    assert "Traceback" not in captured.err, captured.err


def test_a_dataset_path_that_is_not_utf8_is_one_line(tmp_path):
    """The dataset's own path: a UnicodeEncodeError's words ('surrogates not allowed'); now what is wrong."""
    folder = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9")
    os.mkdir(folder)
    with pytest.raises(ValueError, match="the path is not UTF-8 text"):
        schemas.list_parquet_files(os.fsdecode(folder))
    # (run apart: pytest's captured stderr cannot take the name, which the real one writes escaped)
    proc = subprocess.run([sys.executable, "-m", "lait", "inspect", folder], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stderr
    error = proc.stderr
    assert error.count("\n") == 1 and "is not UTF-8 text" in error and "surrogates" not in error, error


def _png(path, color) -> None:
    Image.new("RGB", (8, 6), color).save(path)


def test_a_coco_image_id_given_to_two_files_makes_its_captions_counted_rejects(tmp_path, capsys):
    """The later `images` entry replaced the earlier without a word: both captions of id 1 went to two.png. Which
    file a caption of such an id describes is not known: each is a `duplicate_image_id` reject naming the id, and the
    counts add up. The same entry given twice is one image."""
    images = tmp_path / "images"
    images.mkdir()
    for name, color in (("one.png", "red"), ("two.png", "blue"), ("three.png", "green")):
        _png(images / name, color)
    coco = {"images": [{"id": 1, "file_name": "one.png"}, {"id": 1, "file_name": "two.png"},
                       {"id": 3, "file_name": "three.png"}, {"id": 3, "file_name": "three.png"}],
            "annotations": [{"id": 10, "image_id": 1, "caption": "A red square."},
                            {"id": 11, "image_id": 1, "caption": "A blue square."},
                            {"id": 12, "image_id": 3, "caption": "A green square."}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    assert main(["import-captions", str(tmp_path / "coco.json"), "--format", "coco", "--images", str(images),
                 "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["in"], stats["kept"], stats["rejected"]) == (3, 1, 2), stats
    assert stats["rejected_by_reason"] == {"duplicate_image_id": 2} and stats["images"] == 1
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert sorted(r["detail"].split(": ")[0] for r in rejected) == ["coco:10", "coco:11"]
    assert all("image id 1 " in r["detail"] and "'one.png', 'two.png'" in r["detail"] for r in rejected), rejected
    captions = schemas.read_table(str(out / "captions"), "captions").to_pylist()
    assert [c["caption_id"] for c in captions] == ["coco:12"]


def test_relevance_train_out_whose_name_is_not_utf8_is_one_line_before_training(tmp_path, capsys):
    """It trained and saved the model, which safetensors then could not open, and printing --out failed the
    command in a UTF-8 locale (exit 2 after the save). Refused before anything is read or written."""
    from tests.relevance.conftest import write_pairs
    from tests.relevance.scenes import make_pairs

    pairs = write_pairs(make_pairs(6, seed=4, size=64), str(tmp_path / "pairs"))
    out = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"m\xe9", b"model"))
    status = main(["relevance", "train", "--input", pairs, "--out", out, "--epochs", "1", "--members", "1",
                   "--image-size", "32"])
    error = capsys.readouterr().err
    assert status == 2, error
    assert error.count("\n") == 1 and "--out" in error and "is not UTF-8 text" in error, error
    assert os.listdir(tmp_path) == ["pairs"]  # nothing made
