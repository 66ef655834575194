"""Parquet that LAIT did not write: Hive/Impala file names, Spark's timestamps (microseconds, INT96)."""
import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from lait import cli

UTC = dt.timezone.utc


def _captions(ids, split="test") -> pa.Table:
    rows = [{"caption_id": f"k{i}", "image_id": f"i{i}", "caption": f"a cat {i}", "split": split} for i in ids]
    return schemas.to_table(rows, "captions")


def _candidates(n: int, fetched_at: dt.datetime) -> pa.Table:
    rows = [{"candidate_id": f"c{i}", "image_id": f"{i:064x}", "page_url": f"http://127.0.0.1/p{i}.html",
             "image_url": f"http://127.0.0.1/i{i}.jpg", "alt": f"a red square {i}", "image_bytes": b"x",
             "fetched_at": fetched_at, "source": "crawl"} for i in range(n)]
    return schemas.to_table(rows, "candidates")


def _with_fetched_at(table: pa.Table, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index("fetched_at"), "fetched_at", values)


def _as_spark(table: pa.Table, path, **options) -> None:
    """Write ``table`` as Spark does: plain Parquet, no Arrow schema, no LAIT metadata."""
    pq.write_table(table.replace_schema_metadata(None), str(path), store_schema=False, **options)


def test_a_parquet_file_not_named_parquet_is_refused_naming_it(tmp_path):
    """Hive's `000002_0` beside `part-*.parquet` was left out without a word (`lait eval` scored 20 of 40)."""
    folder = tmp_path / "captions"
    schemas.write_table(_captions(range(2)), str(folder / "part-00000.parquet"), "captions")
    pq.write_table(_captions(range(2, 4)), str(folder / "000002_0"))
    with pytest.raises(ValueError, match=r"captions/000002_0: a Parquet file not named \*\.parquet .*rename it"):
        schemas.list_parquet_files(str(folder))
    with pytest.raises(ValueError, match="000002_0"):
        schemas.read_table(str(folder), "captions")


def test_a_folder_of_only_such_files_is_not_an_empty_dataset(tmp_path, capsys):
    pq.write_table(_captions(range(2)), str(tmp_path / "000000_0"))
    pq.write_table(_captions(range(2, 4)), str(tmp_path / "data.parq"))
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert "000000_0: a Parquet file not named *.parquet" in info["error"]


def test_files_beside_the_shards_that_are_not_parquet_are_left_out(tmp_path):
    """Only a file that begins with Parquet's magic is refused: a dataset folder may hold LAIT's stats.json and run
    marker, Spark's _SUCCESS, checksums, notes; hidden and temporary files are not looked at."""
    schemas.write_table(_captions(range(2)), str(tmp_path / "part-00000.parquet"), "captions")
    (tmp_path / "stats.json").write_text("{}")
    (tmp_path / "_run.started.json").write_text("{}")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "README").write_text("PAR")  # shorter than the magic
    (tmp_path / "notes.txt").write_text("captions from the test split\n")
    pq.write_table(_captions(range(2, 4)), str(tmp_path / ".part-00001.parquet.1234.tmp"))
    (tmp_path / "_temporary" / "0").mkdir(parents=True)
    pq.write_table(_captions(range(2, 4)), str(tmp_path / "_temporary" / "0" / "part-00001"))
    (tmp_path / "beam-temp-x").mkdir()
    pq.write_table(_captions(range(2, 4)), str(tmp_path / "beam-temp-x" / "4f0c"))
    assert schemas.list_parquet_files(str(tmp_path)) == [str(tmp_path / "part-00000.parquet")]
    assert schemas.read_table(str(tmp_path), "captions").num_rows == 2


def test_a_parquet_file_not_named_parquet_is_refused_on_a_remote_filesystem():
    schemas.write_table(_captions(range(2)), "memory://lait-foreign/captions/part-00000.parquet", "captions")
    import fsspec

    with fsspec.open("memory://lait-foreign/captions/000001_0", "wb") as handle:
        pq.write_table(_captions(range(2, 4)), handle)
    with pytest.raises(ValueError, match="000001_0: a Parquet file not named"):
        schemas.list_parquet_files("memory://lait-foreign/captions")


@pytest.mark.parametrize("options", [{"coerce_timestamps": "us"}, {"use_deprecated_int96_timestamps": True}],
                         ids=["micros-utc", "int96"])
def test_spark_timestamps_meet_the_candidates_contract(tmp_path, options):
    """Spark writes fetched_at as TIMESTAMP(MICROS, UTC) or INT96 (read as naive ns): both were refused."""
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    table = _with_fetched_at(_candidates(2, when), pa.array([when] * 2, pa.timestamp("us", tz="UTC")))
    _as_spark(table, tmp_path / "part-00000-x.snappy.parquet", **options)
    schemas.validate_schema(pq.read_schema(tmp_path / "part-00000-x.snappy.parquet"), "candidates")
    read = schemas.read_table(str(tmp_path), "candidates")
    assert read.schema.field("fetched_at").type == pa.timestamp("ms", tz="UTC")
    assert read.column("fetched_at").to_pylist() == [when.replace(microsecond=678000)] * 2


def test_a_folder_mixing_timestamp_units_reads_as_the_contract(tmp_path):
    """pyarrow takes a dataset's schema from its first file and casts the others to it, refusing to drop digits:
    LAIT's ms file first, then Spark's us and INT96 ns files, failed with `would lose data` once accepted."""
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    schemas.write_table(_candidates(1, when), str(tmp_path / "part-00000.parquet"), "candidates")
    us = pa.array([when], pa.timestamp("us", tz="UTC"))
    spark = _with_fetched_at(_candidates(1, when), us)
    _as_spark(spark, tmp_path / "part-00001.parquet", coerce_timestamps="us")
    _as_spark(spark, tmp_path / "part-00002.parquet", use_deprecated_int96_timestamps=True)
    paris = _with_fetched_at(spark, us.cast(pa.timestamp("us", tz="Europe/Paris")))
    pq.write_table(paris, str(tmp_path / "part-00003.parquet"))  # the same instant, shown in another zone
    expected = [when.replace(microsecond=678000)] * 4
    table = schemas.read_table(str(tmp_path), "candidates")
    assert table.schema.field("fetched_at").type == pa.timestamp("ms", tz="UTC")
    assert table.column("fetched_at").to_pylist() == expected
    batches = list(schemas.iter_batches(str(tmp_path), "candidates", columns=["fetched_at"], batch_size=1))
    assert {b.schema.field("fetched_at").type for b in batches} == {pa.timestamp("ms", tz="UTC")}
    assert [v for b in batches for v in b.column(0).to_pylist()] == expected
    assert schemas.count_rows(str(tmp_path), "candidates") == 4


def test_a_fetched_at_that_is_no_timestamp_is_still_refused(tmp_path):
    table = _candidates(1, dt.datetime(2026, 1, 1, tzinfo=UTC))
    table = _with_fetched_at(table, pa.array(["2026-01-01"]))
    with pytest.raises(schemas.SchemaMismatchError, match="column 'fetched_at' has type string"):
        schemas.validate_schema(table.schema, "candidates")


def test_the_filter_refuses_a_parquet_file_not_named_parquet_in_its_input(tmp_path, capsys):
    """The filter lists its input its own way: it left Hive's `000002_0` out too, without a word."""
    folder = tmp_path / "cands"
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    schemas.write_table(_candidates(2, stamp), str(folder / "part-00000.parquet"), "candidates")
    pq.write_table(_candidates(3, stamp), str(folder / "000002_0"))
    (folder / ".hidden").write_bytes(b"PAR1 a hidden file is never read")
    assert cli.main(["filter", "--input", str(folder), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cands/000002_0: a Parquet file not named *.parquet" in err.splitlines()[-1]
    assert not (tmp_path / "out").exists()
