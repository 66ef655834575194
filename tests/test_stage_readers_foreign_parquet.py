"""Stage readers given Parquet written by other tools (plain pyarrow, writers that check neither nullability nor
UTF-8): bad records become counted rejects (`lait relevance score`), bad files one clear line naming the file and
column (`lait train` / `lait eval` captions, regions of two feature widths), never a raw traceback."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from demo import audit
from tests.relevance.conftest import save_tiny_model
from tests.relevance.scenes import make_pairs


def _bad_utf8(values: list) -> pa.Array:
    """``values`` as a string column whose first value ends in bytes that are not UTF-8 (Arrow does not check)."""
    raw = [None if v is None else v.encode() for v in values]
    raw[0] = raw[0][:-2] + b"\xff\xfe"
    return pa.array(raw, pa.binary()).view(pa.string())


def test_relevance_rejects_pairs_that_break_the_contract_and_keeps_the_books(tmp_path):
    """A null caption was scored (kept, or rejected as low_relevance), a null id failed the run at its last write
    naming no input file, invalid UTF-8 stopped it with a bare codec error: now each is a counted reject."""
    from pipeline.relevance import run

    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in make_pairs(2, seed=3)]
    assert len(rows) >= 6
    rows[1]["caption"] = None
    rows[2]["image_id"] = None
    rows[3]["pair_id"] = ""
    good = schemas.to_table(rows[4:], "pairs")
    schema = pa.schema([f.with_nullable(True) for f in good.schema])  # as plain pyarrow writes it
    table = pa.Table.from_pylist(rows, schema=schema)
    index = schema.get_field_index("image_id")
    table = table.set_column(index, schema.field(index), _bad_utf8(table.column("image_id").to_pylist()))
    os.makedirs(tmp_path / "filter" / "pairs")
    pq.write_table(table, str(tmp_path / "filter" / "pairs" / "part-00000.parquet"))

    summary = run(["--input", str(tmp_path / "filter"), "--output", str(tmp_path / "relevance"),
                   "--model", save_tiny_model(str(tmp_path / "model")), "--threshold", "0", "--runner=DirectRunner"])
    stats = json.loads((tmp_path / "relevance" / "stats.json").read_text())
    assert stats["rejected_by_reason"] == {"invalid_utf8": 1, "missing_id": 2, "no_text": 1}
    assert stats["in"] == len(rows) == summary["in"] and stats["kept"] == len(rows) - 4 == summary["kept"]
    rejected = schemas.read_table(str(tmp_path / "relevance" / "rejected"), "rejected").to_pylist()
    details = {r["reason"]: r["detail"] for r in rejected}
    assert details["invalid_utf8"] == "column 'image_id' is not valid UTF-8 in part-00000.parquet"
    assert details["no_text"] == "column 'caption' is null in part-00000.parquet"
    kept = schemas.read_table(str(tmp_path / "relevance" / "pairs"), "pairs")
    assert sorted(kept.column("pair_id").to_pylist()) == sorted(r["pair_id"] for r in rows[4:])
    report = audit.audit_stage(str(tmp_path), "relevance")
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]


def _captions(folder, bad_column: str | None = None) -> str:
    """A captions dataset as plain pyarrow writes it: three captions in part-00000; with ``bad_column``, three
    more in part-00001, one holding invalid UTF-8 there."""
    def rows(first):
        return [{"caption_id": f"c{i}", "image_id": f"img{i}", "caption": "a red circle", "split": "test"}
                for i in range(first, first + 3)]

    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows(1)), os.path.join(folder, "part-00000.parquet"))
    if bad_column:
        table = pa.Table.from_pylist(rows(4))
        index = table.schema.get_field_index(bad_column)
        table = table.set_column(index, table.schema.field(index), _bad_utf8(table.column(bad_column).to_pylist()))
        pq.write_table(table, os.path.join(folder, "part-00001.parquet"))
    return str(folder)


@pytest.mark.parametrize("column", ["caption", "image_id"])
def test_captions_with_invalid_utf8_are_refused_naming_file_and_column(tmp_path, column):
    """Training and eval read the captions alike: a bare "'utf-8' codec can't decode byte" before."""
    from model.data import load_captions, read_captions
    from model.eval import read_eval_captions

    path = _captions(tmp_path / "captions", column)
    message = f"{path}{os.sep}part-00001.parquet: column {column!r} holds text that is not valid UTF-8"
    for read in (lambda: read_captions(path, "test"), lambda: load_captions(path, None),
                 lambda: read_eval_captions(path, "test")):
        with pytest.raises(schemas.SchemaMismatchError) as info:
            read()
        assert str(info.value) == message and info.value.column == column
    assert read_captions(_captions(tmp_path / "fine"), None).num_rows == 3


def _region_row(n: int, dim: int) -> dict:
    return {"image_id": f"img{n}", "image_width": 640, "image_height": 480, "num_boxes": 2,
            "boxes": [[10.0, 10.0, 50.0, 50.0]] * 2, "features": np.ones((2, dim), np.float16),
            "class_ids": [1, 2], "topk_class_ids": [[1, 2]] * 2, "topk_class_probs": [[0.6, 0.3]] * 2}


def test_eval_refuses_regions_files_of_two_feature_widths_naming_the_file(tmp_path):
    """Files of widths 8 and 16 could not be read as one table: a raw ArrowTypeError traceback from `lait eval`,
    where `lait train` refuses the same data in one line naming the file."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from model.eval import EvalSet

    captions = _captions(tmp_path / "captions")
    regions = tmp_path / "regions"
    for part, (n, dim) in enumerate([(1, 8), (2, 16)]):
        schemas.write_table(schemas.to_table([_region_row(n, dim)], "regions", feature_dim=dim),
                            str(regions / f"part-0000{part}.parquet"), "regions")
    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "red": 2, "circle": 3}, unk_token="[UNK]")).to_str()
    with pytest.raises(ValueError) as info:
        EvalSet(str(regions), captions, "test", tokenizer, 16, 4, 8)
    assert str(info.value) == f"{regions}{os.sep}part-00001.parquet: features of width 16, the model reads 8"
    with pytest.raises(ValueError) as info:  # every file of another width: the dataset is named
        EvalSet(str(regions), captions, "test", tokenizer, 16, 4, 32)
    assert str(info.value) == f"{regions}: features of width 8, the model reads 32"
    os.remove(regions / "part-00001.parquet")
    assert EvalSet(str(regions), captions, "test", tokenizer, 16, 4, 8).shape == (1, 1)


def test_features_names_the_file_whose_image_ids_are_not_utf8(tmp_path):
    """`lait features` stopped with a bare "'utf-8' codec can't decode byte", naming neither file nor column."""
    from pipeline.features import plan_shards

    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in make_pairs(1, seed=5)][:3]
    table = schemas.to_table(rows, "pairs")
    index = table.schema.get_field_index("image_id")
    table = table.set_column(index, table.schema.field(index), _bad_utf8(table.column("image_id").to_pylist()))
    os.makedirs(tmp_path / "pairs")
    pq.write_table(table, str(tmp_path / "pairs" / "part-00000.parquet"))
    with pytest.raises(ValueError, match=r"part-00000\.parquet: row group 0: column 'image_id' holds text that is "
                                         r"not valid UTF-8"):
        plan_shards(str(tmp_path / "pairs"), 10)


def test_eval_refuses_regions_whose_image_ids_are_not_utf8_naming_file_and_column(tmp_path):
    """Arrow matched the ids to the captions' as bytes: an image whose id was not UTF-8 was left out silently
    (its captions counted as without regions), where the captions' ids are refused in one line."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from model.eval import EvalSet

    captions = _captions(tmp_path / "captions")
    regions = tmp_path / "regions"
    schemas.write_table(schemas.to_table([_region_row(1, 8)], "regions", feature_dim=8),
                        str(regions / "part-00000.parquet"), "regions")
    table = schemas.to_table([_region_row(2, 8), _region_row(3, 8)], "regions", feature_dim=8)
    index = table.schema.get_field_index("image_id")
    table = table.set_column(index, table.schema.field(index), _bad_utf8(table.column("image_id").to_pylist()))
    pq.write_table(table, str(regions / "part-00001.parquet"))
    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "red": 2, "circle": 3}, unk_token="[UNK]")).to_str()
    with pytest.raises(schemas.SchemaMismatchError) as info:
        EvalSet(str(regions), captions, "test", tokenizer, 16, 4, 8)
    assert str(info.value) == (f"{regions}{os.sep}part-00001.parquet: column 'image_id' holds text that is not "
                               "valid UTF-8") and info.value.column == "image_id"
    os.remove(regions / "part-00001.parquet")
    assert EvalSet(str(regions), captions, "test", tokenizer, 16, 4, 8).shape == (1, 1)
