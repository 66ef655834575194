"""`lait inspect`'s exit status: 1 for a dataset LAIT's readers refuse, such as one folder holding two kinds."""
import json

import pyarrow.parquet as pq

import schemas
from lait import cli


def _write_mixed(folder):
    pairs = [{"pair_id": "p0", "image_id": "i0", "caption": "a cat"}]
    captions = [{"caption_id": "k0", "image_id": "i0", "caption": "a cat", "split": "train"},
                {"caption_id": "k1", "image_id": "i1", "caption": "a dog", "split": "test"}]
    schemas.write_table(schemas.to_table(pairs, "pairs"), str(folder / "part-00000.parquet"), "pairs")
    schemas.write_table(schemas.to_table(captions, "captions"), str(folder / "part-00001.parquet"), "captions")


def test_a_folder_mixing_two_kinds_exits_1(tmp_path, capsys):
    """Pairs and captions files in one folder printed SCHEMA PROBLEM and exited 0."""
    _write_mixed(tmp_path / "mixed")
    assert cli.main(["inspect", str(tmp_path / "mixed")]) == 1
    out = capsys.readouterr().out
    assert "SCHEMA PROBLEM: files of 2 kinds in one dataset: pairs (1 file), captions (1 file)" in out
    assert cli.main(["inspect", str(tmp_path / "mixed"), "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["schema_ok"] is False and info["file_kinds"] == {"pairs": 1, "captions": 1}
    assert info["kind"] == "pairs" and info["rows"] == 3 and "is a 'captions' dataset" in info["schema_problem"]


def test_a_run_folder_with_one_mixed_dataset_exits_1_and_says_which(tmp_path, capsys):
    schemas.write_table(schemas.to_table([{"pair_id": "p", "image_id": "i", "caption": "a cat"}], "pairs"),
                        str(tmp_path / "filter" / "pairs" / "part-00000.parquet"))
    _write_mixed(tmp_path / "filter" / "rejected")
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 1
    infos = {info["path"]: info for info in json.loads(capsys.readouterr().out)}
    assert infos[str(tmp_path / "filter" / "pairs")]["schema_ok"] is True
    assert infos[str(tmp_path / "filter" / "rejected")]["schema_ok"] is False


def test_mixing_is_found_whatever_kind_the_first_file_declares(tmp_path, capsys):
    """A first file of a kind this LAIT does not know (described, exit 0 alone) beside a captions file."""
    table = schemas.to_table([{"caption_id": "c", "image_id": "i", "caption": "a dog", "split": "train"}], "captions")
    pq.write_table(table.replace_schema_metadata({b"lait.schema": b"captions_v2", b"lait.schema_version": b"1"}),
                   tmp_path / "part-00000.parquet")
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["schema_ok"] is None and "unknown kind 'captions_v2'" in alone["schema_problem"]
    schemas.write_table(table, str(tmp_path / "part-00001.parquet"), "captions")
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["schema_ok"] is False and info["file_kinds"] == {"captions_v2": 1, "captions": 1}
    assert "unknown kind 'captions_v2'" in info["schema_problem"]


def test_healthy_and_empty_datasets_exit_0(tmp_path, capsys):
    captions = [{"caption_id": "k0", "image_id": "i0", "caption": "a cat", "split": "train"}]
    for name in ("part-00000.parquet", "part-00001.parquet"):
        schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / name), "captions")
    (tmp_path / "rejected").mkdir()
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    infos = {info["path"]: info for info in json.loads(capsys.readouterr().out)}
    assert infos[str(tmp_path / "captions")]["schema_ok"] is True and "file_kinds" not in infos[str(tmp_path / "captions")]
    assert infos[str(tmp_path / "rejected")]["schema_ok"] is True and infos[str(tmp_path / "rejected")]["rows"] == 0
