"""Parquet files LAIT writes dictionary-encode only their string columns (locally and from Beam)."""
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq

import schemas
from pipeline.options import beam_options
from pipeline.parquet_beam import WriteToParquet
from pipeline.runners import make_pipeline


def _rows(n=6):
    rng = np.random.default_rng(0)
    return [{"pair_id": f"p{i}", "candidate_id": f"c{i}", "image_id": f"{i:064x}", "caption": f"a caption {i}",
             "text_source": "alt", "page_url": "http://127.0.0.1/p.html", "image_url": f"http://127.0.0.1/{i}.jpg",
             "image_bytes": rng.integers(0, 255, 3000, dtype=np.uint8).tobytes(), "image_width": 64,
             "image_height": 48, "lang": "en"} for i in range(n)]


def _encodings(path):
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns)]
    return {name: meta.row_group(0).column(i).encodings for i, name in enumerate(names)}


def _dictionary(encodings):
    return any("DICTIONARY" in e for e in encodings)


def test_dictionary_columns_are_the_strings():
    schema = schemas.schema_for("regions")
    chosen = schemas.dictionary_columns(schema)
    assert "image_id" in chosen and "detector" in chosen
    assert not {"features", "boxes", "class_ids", "topk_class_probs"} & set(chosen)


def test_local_and_beam_writers_skip_the_dictionary_on_bytes(tmp_path):
    table = schemas.to_table(_rows(), "pairs")
    local = schemas.write_table(table, str(tmp_path / "local" / "part-00000.parquet"), "pairs")
    with make_pipeline(beam_options([])) as pipeline:  # LAIT's local runner, as the stages run
        (pipeline | beam.Create(table.to_pylist())
         | WriteToParquet(str(tmp_path / "beam" / "part"), table.schema, file_name_suffix=".parquet", num_shards=1))
    beam_files = [os.path.join(tmp_path, "beam", f) for f in os.listdir(tmp_path / "beam") if f.endswith(".parquet")]
    assert len(beam_files) == 1
    for path in (local, beam_files[0]):
        encodings = _encodings(path)
        assert not _dictionary(encodings["image_bytes"]), path
        assert _dictionary(encodings["image_id"]) and _dictionary(encodings["caption"]), path
        assert schemas.read_table(path, "pairs").to_pylist() == table.to_pylist()
