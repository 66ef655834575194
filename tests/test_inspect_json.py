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
    assert [d["kind"] for d in _strict_json(capsys.readouterr().out)] == ["pairs"]  # a folder's scan: a list
    assert f"{tmp_path}: 1 folder whose name is not UTF-8 text left out" in caplog.text
    assert schemas.subfolders(str(tmp_path)) == ["pairs"]


def test_nanosecond_timestamps_are_shown_as_text(tmp_path, capsys):
    """pandas and Spark's INT96 give ns timestamps; a value with digits past the microsecond failed the whole
    inspection (exit 1, pyarrow's "Install pandas ...") instead of showing the dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    when = pa.array([1700000000123456789, None], pa.timestamp("ns", tz="UTC"))
    table = pa.table({"id": ["a", "b"], "when": when, "whens": pa.array([[1700000000123456789], None],
                                                                         pa.list_(pa.timestamp("ns")))})
    pq.write_table(table, tmp_path / "part-00000.parquet", version="2.6")
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    sample = _strict_json(capsys.readouterr().out)["sample"]
    assert [row["when"] for row in sample] == ["2023-11-14 22:13:20.123456789Z", None]
    assert [row["whens"] for row in sample] == ["<list<element: timestamp[ns]>>", None]  # no text form
    assert [row["id"] for row in sample] == ["a", "b"]
    assert cli.main(["inspect", str(tmp_path)]) == 0
    assert "when                 2023-11-14 22:13:20.123456789Z" in capsys.readouterr().out


def test_a_kind_that_is_not_utf8_is_described_as_an_unknown_kind(tmp_path, capsys):
    """A `lait.schema` or `lait.schema_version` that is not UTF-8 text failed `lait inspect` with a bare codec error."""
    import pyarrow.parquet as pq

    pairs = schemas.to_table([{"pair_id": "p0", "image_id": "img0", "caption": "a red circle"}], "pairs")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pq.write_table(pairs.replace_schema_metadata({b"lait.schema": b"\xffpairs"}), tmp_path / "a" / "part.parquet")
    assert cli.main(["inspect", str(tmp_path / "a"), "--json"]) == 0
    info = _strict_json(capsys.readouterr().out)
    assert info["kind"] == "\\xffpairs" and "unknown kind '\\\\xffpairs'" in info["schema_problem"]
    version = {b"lait.schema": b"pairs", b"lait.schema_version": b"\xff"}
    pq.write_table(pairs.replace_schema_metadata(version), tmp_path / "b" / "part.parquet")
    assert cli.main(["inspect", str(tmp_path / "b"), "--json"]) == 1
    info = _strict_json(capsys.readouterr().out)
    assert info["schema_version"] == "\\xff" and "its lait.schema_version metadata is not UTF-8" in info["schema_problem"]


def test_a_candidates_folder_mixing_timestamp_units_is_inspected(tmp_path, capsys):
    """LAIT's ms file first, then Spark's us one: the sample rows failed pyarrow's cast (`would lose data`), exit 1."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    row = {"candidate_id": "c0", "image_id": "0" * 64, "page_url": "http://127.0.0.1/p.html",
           "image_url": "http://127.0.0.1/i.jpg", "fetched_at": when, "source": "crawl"}
    table = schemas.to_table([row], "candidates")
    schemas.write_table(table, str(tmp_path / "part-00000.parquet"), "candidates")
    us = table.set_column(table.schema.get_field_index("fetched_at"), "fetched_at",
                          pa.array([when], pa.timestamp("us", tz="UTC")))
    pq.write_table(us.replace_schema_metadata(None), tmp_path / "part-00001-x.snappy.parquet", store_schema=False)
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    info = _strict_json(capsys.readouterr().out)
    assert info["kind"] == "candidates" and info["schema_ok"] is True
    assert [r["fetched_at"] for r in info["sample"]] == ["2026-01-02T03:04:05.678000+00:00",
                                                         "2026-01-02T03:04:05.678901+00:00"]
