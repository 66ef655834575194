"""Mistakes people make with their own files: a caption file of the other format, or saved by another program;
an --out that is one of the command's inputs; a checkpoint that is not quite one. Each is one line and exit
status 2 before any output is touched, or a counted reject; never a traceback, never an input overwritten."""
import dataclasses
import json
import os

import pytest
from PIL import Image

import schemas
from lait import cli
from model.synthetic import write_synthetic

COCO = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "a red picture"},
                        {"id": 11, "image_id": 2, "caption": "a green square"}]}
KARPATHY = {"images": [{"filename": "a.jpg", "imgid": 0, "split": "test", "sentences": [{"raw": "red", "sentid": 0}]},
                       {"filename": "b.png", "imgid": 1, "split": "val", "sentences": [{"raw": "green", "sentid": 1}]}]}


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(folder / "a.jpg")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(folder / "b.png")
    return folder


def _import(tmp_path, content, fmt, out="out", name="captions.json"):
    source = tmp_path / name
    source.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return cli.main(["import-captions", str(source), "--format", fmt, "--images", str(tmp_path / "images"),
                     "--out", str(tmp_path / out)])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("content, fmt, message", [
    (COCO, "karpathy", "a Karpathy split file's images hold 'sentences', none of this one's 2 does (it has "
                       "'annotations': a COCO captions file?)"),
    (KARPATHY, "coco", "a COCO captions file is a JSON object with 'images' and 'annotations' lists, this one has "
                       "no 'annotations' (its images hold 'sentences': a Karpathy split file?)"),
    ({"annotations": []}, "coco", "this one has no 'images'"),
    (b"", "coco", "(the file is empty)"),
    (b" \n", "karpathy", "(the file is empty)"),
    ({"images": [], "annotations": []}, "coco", "holds no captions read as a coco file (its 'annotations' list is "
                                                "empty); --out is not touched"),
    ({"images": [{"filename": "a.jpg", "sentences": []}]}, "karpathy",
     "holds no captions read as a karpathy file (no image in it has a sentence)"),
    (b"[" * 100_000 + b"]" * 100_000, "coco", "its JSON is nested too deeply to read"),
])
def test_a_caption_file_of_the_wrong_format_or_empty_is_refused_before_out_is_touched(
        tmp_path, images, capsys, content, fmt, message):
    """Each was an empty "finished" import (exit 0, stats.json written), after which the rerun with the right
    format was refused as "already holds a finished import"; the deeply nested one a RecursionError traceback."""
    assert _import(tmp_path, content, fmt) == 2
    err = _one_line(capsys)
    assert err.startswith(f"lait import-captions: {tmp_path / 'captions.json'} ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_the_rerun_with_the_right_format_imports(tmp_path, images):
    assert _import(tmp_path, COCO, "karpathy") == 2 and _import(tmp_path, KARPATHY, "coco") == 2
    assert _import(tmp_path, COCO, "coco") == 0
    assert _import(tmp_path, KARPATHY, "karpathy", out="out-k") == 0


@pytest.mark.parametrize("content, fmt", [(COCO, "coco"), (KARPATHY, "karpathy")])
def test_json_with_a_utf8_bom_is_read(tmp_path, images, content, fmt):
    """Notepad writes UTF-8 with a BOM: the TSV reader took it, the JSON ones failed ("Unexpected UTF-8 BOM")."""
    assert _import(tmp_path, b"\xef\xbb\xbf" + json.dumps(content).encode(), fmt) == 0
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["kept"] == 2


def test_a_coco_image_id_that_is_a_bool_does_not_replace_image_1(tmp_path, images):
    """`"id": true` is 1 to Python: the image it named replaced image 1, whose captions then went to its bytes. A bool
    is no id, as for annotations: the image is left out, and captions naming it (`"image_id": true`) are
    image_missing."""
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": True, "file_name": "b.png"}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "a red picture"},
                            {"id": 2, "image_id": True, "caption": "names the bool image"}]}
    assert _import(tmp_path, coco, "coco") == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert (stats["kept"], stats["rejected_by_reason"], stats["images"]) == (1, {"image_missing": 1}, 1)
    (pair,) = schemas.read_table(str(tmp_path / "out" / "pairs"), "pairs").to_pylist()
    assert pair["image_url"].endswith("/a.jpg")


def test_an_out_that_is_a_file_or_not_utf8_is_one_line(tmp_path, images, capsys):
    """--out naming a file said "[Errno 17] File exists"; a name that is not UTF-8 failed part-way and left the
    folder holding only the import's running mark."""
    (tmp_path / "afile").write_text("mine")
    assert _import(tmp_path, COCO, "coco", out="afile") == 2
    assert "--out " + str(tmp_path / "afile") + " is a file, not a folder" in _one_line(capsys)
    assert (tmp_path / "afile").read_text() == "mine"
    assert _import(tmp_path, COCO, "coco", out=os.fsdecode(b"out\xe9")) == 2
    assert "the folder's name is not UTF-8 text" in _one_line(capsys)
    assert not os.path.exists(os.fsencode(tmp_path) + b"/out\xe9")


# lait eval


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    """A synthetic dataset and a checkpoint of an untrained tiny model (as lait train writes one), whose tokenizer
    is not a tokenizer: enough for what lait eval checks before scoring."""
    import torch

    from model.config import ModelConfig
    from model.imagebert import ImageBert
    from model.train import CHECKPOINT_FORMAT, save_checkpoint

    base = tmp_path_factory.mktemp("eval")
    write_synthetic(str(base / "data"), images=12, feature_dim=16, test_images=4, seed=1)
    config = ModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                         feature_dim=16, num_classes=6, max_text_len=12, max_regions=6, max_position=32)
    torch.manual_seed(0)
    save_checkpoint(str(base / "ck.pt"), {"format": CHECKPOINT_FORMAT, "model_config": dataclasses.asdict(config),
                                          "model": ImageBert(config).state_dict(), "tokenizer": "{}"})
    return base


def _files(folder):
    return {os.path.join(root, name): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


@pytest.mark.parametrize("out, message", [
    ("ck.pt", "it is the checkpoint {base}/ck.pt that eval reads"),
    ("data/captions/part-00000.parquet", "it lies inside the captions dataset {base}/data/captions that eval reads"),
    ("data/regions/eval.json", "it lies inside the regions dataset {base}/data/regions that eval reads"),
    ("data/classes.json", "it is {base}/data/classes.json, a file of the --data folder it reads, not an earlier "
                          "output of this command: give a new file"),
    ("data/stats.json", "{base}/data/stats.json is a name LAIT's tools read in the --data folder it reads"),
])
def test_eval_out_that_is_an_input_is_refused_before_scoring(eval_inputs, capsys, out, message):
    """`lait eval --checkpoint ck.pt --out ck.pt` replaced the checkpoint with JSON; `--out
    DATA/captions/part-00000.parquet` a captions shard."""
    base = str(eval_inputs)
    before = _files(base)
    assert cli.main(["eval", "--checkpoint", f"{base}/ck.pt", "--data", f"{base}/data", "--out", f"{base}/{out}",
                     "--no-progress", "--device", "cpu"]) == 2
    err = _one_line(capsys)
    assert err.startswith(f"lait eval: --out {base}/{out}: {message.format(base=base)}"), err
    assert _files(base) == before


def test_eval_of_a_checkpoint_whose_tokenizer_is_not_one_is_one_line(eval_inputs, tmp_path, capsys):
    """The tokenizers library's bare `Exception: Model missing` was a traceback once scoring began."""
    base = str(eval_inputs)
    assert cli.main(["eval", "--checkpoint", f"{base}/ck.pt", "--data", f"{base}/data", "--out",
                     str(tmp_path / "eval.json"), "--no-progress", "--device", "cpu"]) == 2
    assert _one_line(capsys).startswith(f"lait eval: {base}/ck.pt: its tokenizer is not a tokenizer (Model missing")
    assert not (tmp_path / "eval.json").exists()


def test_eval_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """eval.json was opened for writing (emptied) before its JSON was written: a write that failed part-way (a full
    disk, `ulimit -f`) left the previous result 0 bytes long."""
    from model.eval import write_eval

    path = tmp_path / "eval.json"
    write_eval({"image_retrieval": {"R@1": 0.5}}, str(path))
    before = path.read_text()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    with pytest.raises(OSError):
        write_eval({"image_retrieval": {"R@1": 0.9}}, str(path))
    assert path.read_text() == before and os.listdir(tmp_path) == ["eval.json"]
