"""`lait train` refuses regions whose image_id is not valid UTF-8 as `lait eval` does: one line naming the file and
the column. Before, it stopped on a bare "'utf-8' codec can't decode byte", naming neither."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from imagebert_testlib import train_config_dict
from model.data import index_pairs, region_image_ids
from model.config import DatasetConfig
from model.synthetic import write_synthetic
from tests.inprocess import lait_here


def _with_bad_ids(source: str, target: str, rows: int = 2) -> str:
    """``target``: a regions file of the first ``rows`` rows of the regions file ``source``, the first image_id
    ending in bytes that are not UTF-8, written as plain pyarrow writes it (Arrow does not check)."""
    table = pq.read_table(source).slice(0, rows)
    index = table.schema.get_field_index("image_id")
    raw = [f"other-{value}".encode() for value in table.column("image_id").to_pylist()]
    raw[0] = raw[0][:-2] + b"\xff\xfe"
    table = table.set_column(index, table.schema.field(index), pa.array(raw, pa.binary()).view(pa.string()))
    pq.write_table(table, target)
    return target


@pytest.fixture
def tiny(tmp_path):
    """24 synthetic images (4 held out for test), D=16."""
    write_synthetic(str(tmp_path / "data"), images=24, feature_dim=16, test_images=4, seed=1)
    return tmp_path / "data"


def _train(config: dict, folder) -> tuple[int, str]:
    path = folder / "train.json"
    path.write_text(json.dumps(config))
    result = lait_here("train", "--config", str(path), "--no-progress", check=False)
    return result.returncode, result.stderr


def test_train_refuses_training_regions_whose_image_ids_are_not_utf8(tiny, tmp_path):
    regions = tiny / "regions"
    bad = _with_bad_ids(str(regions / "part-00000.parquet"), str(regions / "part-00001.parquet"))
    config = train_config_dict(str(tiny), str(tmp_path / "run"))
    code, err = _train(config, tmp_path)
    assert code == 2 and err == f"lait train: {bad}: column 'image_id' holds text that is not valid UTF-8\n"
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "final.pt")
    entry = DatasetConfig(regions=str(regions), captions=str(tiny / "captions"), split="train")
    with pytest.raises(schemas.SchemaMismatchError) as info:  # the join the trainer and its report read
        index_pairs([entry])
    assert info.value.column == "image_id"


def test_train_refuses_eval_regions_whose_image_ids_are_not_utf8_before_training(tiny, tmp_path):
    eval_regions = tmp_path / "eval_regions"
    eval_regions.mkdir()
    (eval_regions / "part-00000.parquet").write_bytes((tiny / "regions" / "part-00000.parquet").read_bytes())
    bad = _with_bad_ids(str(tiny / "regions" / "part-00000.parquet"), str(eval_regions / "part-00001.parquet"))
    config = train_config_dict(str(tiny), str(tmp_path / "run"),
                               eval={"regions": str(eval_regions), "captions": str(tiny / "captions"), "split": "test"})
    code, err = _train(config, tmp_path)
    assert code == 2 and err == f"lait train: {bad}: column 'image_id' holds text that is not valid UTF-8\n"
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # refused before any training
    with pytest.raises(schemas.SchemaMismatchError):
        region_image_ids(str(eval_regions))
    os.remove(bad)
    assert len(region_image_ids(str(eval_regions))) == 24
