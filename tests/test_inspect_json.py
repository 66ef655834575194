"""`lait inspect --json` prints valid JSON: NaN and infinite cells are null (JSON has no NaN)."""
import json
import math

import pytest

import schemas
from lait import cli


def _strict_json(text):
    """Parse as a strict JSON reader would: Python's json accepts NaN and Infinity, others do not."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinite_cells_are_null_in_json(tmp_path, capsys):
    row = {"image_id": "img0", "image_width": 64, "image_height": 48, "num_boxes": 2,
           "boxes": [[0, 0, 10, 10], [5, 5, 20, 20]], "features": [[0.5] * 4, [math.nan] * 4],
           "class_ids": [1, 2], "class_scores": [math.nan, math.inf], "topk_class_ids": [[1], [2]],
           "topk_class_probs": [[-math.inf], [0.25]], "detector": "demo"}
    schemas.write_table(schemas.to_table([row], "regions", feature_dim=4),
                        str(tmp_path / "regions" / "part-00000.parquet"), "regions")
    pairs = [{"pair_id": "p0", "image_id": "img0", "caption": "a red circle", "lang_score": math.nan,
              "relevance": math.inf}]
    schemas.write_table(schemas.to_table(pairs, "pairs"), str(tmp_path / "pairs" / "part-00000.parquet"), "pairs")

    assert cli.main(["inspect", str(tmp_path / "regions"), "--json"]) == 0
    sample = _strict_json(capsys.readouterr().out)["sample"][0]
    assert sample["class_scores"] == [None, None] and sample["image_width"] == 64
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0  # a stage folder: a list of datasets
    infos = _strict_json(capsys.readouterr().out)
    pair = next(i for i in infos if i["kind"] == "pairs")["sample"][0]
    assert pair["lang_score"] is None and pair["relevance"] is None and pair["caption"] == "a red circle"


def test_text_output_still_shows_nan(tmp_path, capsys):
    pairs = [{"pair_id": "p0", "image_id": "img0", "caption": "a red circle", "lang_score": math.nan}]
    schemas.write_table(schemas.to_table(pairs, "pairs"), str(tmp_path / "part-00000.parquet"), "pairs")
    assert cli.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lang_score           nan" in out


@pytest.mark.parametrize("value,expected", [(math.nan, None), (-math.inf, None), (1.5, 1.5),
                                            ({"a": [math.nan, {"b": math.inf}]}, {"a": [None, {"b": None}]})])
def test_json_safe_cells(value, expected):
    from lait.commands.inspect import json_safe

    assert json_safe(value) == expected


def test_a_subfolder_whose_name_is_not_utf8_is_left_out_in_one_line(tmp_path, capsys, caplog):
    """`lait inspect R` with R holding `mkdir $'caf\\xe9'` failed with a UnicodeDecodeError traceback from pyarrow
    (FileInfo.path): the folder is left out now, with a warning saying so; the datasets beside it are inspected."""
    import os

    pairs = [{"pair_id": "p0", "image_id": "img0", "caption": "a red circle"}]
    schemas.write_table(schemas.to_table(pairs, "pairs"), str(tmp_path / "pairs" / "part-00000.parquet"), "pairs")
    os.mkdir(os.fsencode(tmp_path) + b"/caf\xe9")
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    assert _strict_json(capsys.readouterr().out)["kind"] == "pairs"
    assert f"{tmp_path}: 1 folder whose name is not UTF-8 text left out" in caplog.text
    assert schemas.subfolders(str(tmp_path)) == ["pairs"]
