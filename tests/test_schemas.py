import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from schemas.core import check_not_null


def _candidate(i: int) -> dict:
    data = f"image-{i}".encode()
    return {
        "candidate_id": f"c{i}",
        "image_id": hashlib.sha256(data).hexdigest(),
        "page_url": f"http://127.0.0.1/page{i}.html",
        "image_url": f"http://127.0.0.1/img{i}.jpg",
        "alt": f"a red square number {i}",
        "title": None,
        "page_lang": "en",
        "http_status": 200,
        "content_type": "image/jpeg",
        "image_bytes": data,
        "width": 640,
        "height": 480,
        "format": "JPEG",
        "num_bytes": len(data),
        "fetched_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        "source": "crawl",
    }


def _region_row(n: int, dim: int) -> dict:
    rng = np.random.default_rng(n)
    return {
        "image_id": f"img{n}",
        "image_width": 640,
        "image_height": 480,
        "num_boxes": n,
        "boxes": rng.uniform(0, 400, (n, 4)).astype(np.float32).tolist(),
        "features": rng.standard_normal((n, dim)).astype(np.float16),
        "class_ids": list(range(n)),
        "class_scores": [0.5] * n,
        "topk_class_ids": [[1, 2]] * n,
        "topk_class_probs": [[0.6, 0.3]] * n,
        "detector": "demo",
    }


def test_candidates_round_trip(tmp_path):
    rows = [_candidate(i) for i in range(5)]
    path = tmp_path / "candidates"
    with schemas.ShardWriter(str(path), "candidates", rows_per_shard=2) as writer:
        writer.write_many(rows)
    files = schemas.list_parquet_files(str(path))
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = schemas.read_table(str(path), "candidates")
    assert table.num_rows == 5
    back = sorted(table.to_pylist(), key=lambda r: r["candidate_id"])
    for original, read in zip(rows, back):
        for key, value in original.items():
            assert read[key] == value, key
    meta = pq.read_schema(files[0]).metadata
    assert meta[b"lait.schema"] == b"candidates"
    assert meta[b"lait.schema_version"] == str(schemas.SCHEMA_VERSION).encode()


@pytest.mark.parametrize("kind", ["pairs", "rejected", "captions"])
def test_other_kinds_round_trip(tmp_path, kind):
    sample = {
        "pairs": {"pair_id": "p1", "image_id": "i1", "caption": "a dog on grass", "lang_score": 0.5,
                  "relevance": 0.9, "width": 3, "height": 4, "image_bytes": b"\x00\x01"},
        "rejected": schemas.rejected_row("filter", "text_too_short", "2 words", candidate_id="c1"),
        "captions": {"caption_id": "k1", "image_id": "i1", "caption": "two cats", "split": "test"},
    }[kind]
    path = tmp_path / f"{kind}.parquet"
    schemas.write_table(schemas.to_table([sample], kind), str(path), kind)
    row = schemas.read_table(str(path), kind).to_pylist()[0]
    for key, value in sample.items():
        assert row[key] == pytest.approx(value) if isinstance(value, float) else row[key] == value


def test_regions_float16_features_keep_their_width(tmp_path):
    dim = 16
    table = schemas.to_table([_region_row(3, dim), _region_row(10, dim)], "regions", feature_dim=dim)
    path = tmp_path / "regions" / "part-00000.parquet"
    schemas.write_table(table, str(path), "regions")
    back = schemas.read_table(str(tmp_path / "regions"), "regions")
    features_type = back.schema.field("features").type
    assert features_type.value_type == pa.list_(pa.float16(), dim)
    first = np.asarray(back.column("features")[1].as_py(), dtype=np.float16)
    assert first.shape == (10, dim)
    np.testing.assert_array_equal(first, _region_row(10, dim)["features"])


def test_wrong_type_names_the_column(tmp_path):
    table = schemas.to_table([_candidate(0)], "candidates")
    bad = table.set_column(table.schema.get_field_index("width"), "width", pa.array(["640"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(schemas.SchemaMismatchError, match="'width'") as info:
        schemas.open_dataset(str(tmp_path), "candidates")
    assert info.value.column == "width"
    assert "bad.parquet" in str(info.value)


def test_missing_column_names_the_column(tmp_path):
    table = schemas.to_table([_candidate(0)], "candidates").drop_columns(["image_url"])
    pq.write_table(table, tmp_path / "part.parquet")
    with pytest.raises(schemas.SchemaMismatchError, match="missing column 'image_url'"):
        schemas.read_table(str(tmp_path), "candidates")


def test_wrong_kind_and_version_are_refused(tmp_path):
    pairs = schemas.to_table([{"pair_id": "p", "image_id": "i", "caption": "x y z"}], "pairs")
    schemas.write_table(pairs, str(tmp_path / "pairs" / "a.parquet"))
    with pytest.raises(schemas.SchemaMismatchError, match="is a 'pairs' dataset"):
        schemas.open_dataset(str(tmp_path / "pairs"), "candidates")
    future = pairs.replace_schema_metadata({b"lait.schema": b"pairs", b"lait.schema_version": b"99"})
    pq.write_table(future, tmp_path / "future.parquet")
    with pytest.raises(schemas.SchemaMismatchError, match="schema version 99"):
        schemas.open_dataset(str(tmp_path / "future.parquet"), "pairs")


def test_regions_feature_dim_is_open_but_element_type_is_not(tmp_path):
    row = _region_row(2, 8)
    table = schemas.to_table([row], "regions", feature_dim=8)
    schemas.validate_schema(table.schema, "regions")  # any width passes
    as_f32 = table.schema.set(
        table.schema.get_field_index("features"), pa.field("features", pa.list_(pa.list_(pa.float32(), 8)))
    )
    with pytest.raises(schemas.SchemaMismatchError, match="'features'"):
        schemas.validate_schema(as_f32, "regions")


def test_only_the_feature_width_is_open_boxes_stay_four_coordinates(tmp_path):
    """The open width of regions applies to ``features`` alone: boxes of three coordinates were accepted."""
    for dim in (8, 256):
        schemas.validate_schema(schemas.to_table([_region_row(2, dim)], "regions", feature_dim=dim).schema, "regions")
    good = schemas.schema_for("regions", feature_dim=8)
    three = good.set(good.get_field_index("boxes"), pa.field("boxes", pa.list_(pa.list_(pa.float32(), 3))))
    with pytest.raises(schemas.SchemaMismatchError, match="'boxes'"):
        schemas.validate_schema(three, "regions")
    row = _region_row(2, 8)
    row["boxes"] = [b[:3] for b in row["boxes"]]
    row["features"] = list(row["features"])
    table = pa.Table.from_pylist([row], schema=three)
    pq.write_table(table, tmp_path / "three.parquet")
    with pytest.raises(schemas.SchemaMismatchError, match="'boxes'"):
        schemas.open_dataset(str(tmp_path / "three.parquet"), "regions")


def test_path_type_and_subfolders_on_local_paths_and_urls(tmp_path):
    table = schemas.to_table([{"caption_id": "k", "image_id": "i", "caption": "a b c"}], "captions")
    schemas.write_table(table, str(tmp_path / "run" / "stage" / "captions" / "part-00000.parquet"))
    (tmp_path / "run" / ".hidden").mkdir()
    for base in (str(tmp_path / "run"), f"file://{tmp_path / 'run'}"):
        assert schemas.path_type(base) == "folder"
        assert schemas.subfolders(base) == ["stage"]
        assert schemas.subfolders(schemas.join_path(base, "stage")) == ["captions"]
        assert schemas.path_type(schemas.join_path(base, "stage", "captions", "part-00000.parquet")) == "file"
        assert schemas.path_type(schemas.join_path(base, "absent")) is None
    schemas.write_table(table, "memory://lait-subfolders/run/stage/captions/part-00000.parquet")
    assert schemas.path_type("memory://lait-subfolders/run") == "folder"
    assert schemas.subfolders("memory://lait-subfolders/run") == ["stage"]
    assert schemas.join_path("memory://lait-subfolders/run", "stage") == "memory://lait-subfolders/run/stage"


def test_fsspec_url_is_readable():
    import fsspec

    table = schemas.to_table([{"caption_id": "k", "image_id": "i", "caption": "a b c", "split": "train"}], "captions")
    url = "memory://lait-test/captions/part-00000.parquet"
    schemas.write_table(table, url, "captions")
    assert fsspec.filesystem("memory").exists("/lait-test/captions/part-00000.parquet")
    assert schemas.count_rows("memory://lait-test/captions", "captions") == 1
    assert schemas.read_table("memory://lait-test/captions", "captions").column("caption").to_pylist() == ["a b c"]


def test_unreadable_and_partial_files(tmp_path):
    (tmp_path / "part-00000.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(schemas.SchemaMismatchError, match="not a readable Parquet file"):
        schemas.open_dataset(str(tmp_path), "captions")
    (tmp_path / "part-00000.parquet").unlink()
    (tmp_path / ".part-00001.parquet.abc.tmp").write_bytes(b"partial")
    # a hidden in-progress file is not part of the dataset; an empty folder is an empty dataset
    assert schemas.count_rows(str(tmp_path), "captions") == 0
    # nor is a shard a killed Beam job left in its sink's temporary folder (it would count twice)
    temp = tmp_path / "beam-temp-part-0123abcd"
    temp.mkdir()
    rows = schemas.to_table([{"caption_id": "c", "image_id": "i", "caption": "a dog", "split": "train"}], "captions")
    schemas.write_table(rows, str(temp / "0123.parquet"), "captions")
    assert schemas.list_parquet_files(str(tmp_path)) == [] and schemas.count_rows(str(tmp_path), "captions") == 0
    schemas.write_table(rows, str(tmp_path / "beam-temp-looking-name.parquet"), "captions")  # a file name is not a folder
    assert schemas.count_rows(str(tmp_path), "captions") == 1
    with pytest.raises(FileNotFoundError):
        schemas.open_dataset(str(tmp_path / "nothing-here"), "captions")


def test_shard_writer_continues_numbering_and_drops_partial_on_error(tmp_path):
    out = str(tmp_path / "c")
    with schemas.ShardWriter(out, "candidates", rows_per_shard=10) as writer:
        writer.write(_candidate(0))
    with pytest.raises(RuntimeError):
        with schemas.ShardWriter(out, "candidates", rows_per_shard=10) as writer:
            writer.write(_candidate(1))
            raise RuntimeError("killed")
    assert schemas.count_rows(out, "candidates") == 1
    again = schemas.ShardWriter(out, "candidates")
    assert again._index == 1


def test_detect_kind():
    assert schemas.detect_kind(schemas.schema_for("regions", feature_dim=4)) == "regions"
    bare = pa.schema([(f.name, f.type) for f in schemas.captions_schema()])
    assert schemas.detect_kind(bare) == "captions"
    assert schemas.detect_kind(pa.schema([("x", pa.int8())])) is None


# Page layout, read from the page headers (Thrift compact protocol): pyarrow reports pages nowhere.

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _thrift_value(data: bytes, pos: int, kind: int):
    """One compact-protocol value of type ``kind`` at ``pos``: (value, position after it)."""
    if kind in (1, 2):  # a struct field's boolean lives in its type
        return kind == 1, pos
    if kind == 3:
        return data[pos], pos + 1
    if kind in (4, 5, 6):  # zigzag varints
        value, pos = _varint(data, pos)
        return (value >> 1) ^ -(value & 1), pos
    if kind == 7:
        return data[pos:pos + 8], pos + 8
    if kind == 8:
        size, pos = _varint(data, pos)
        return data[pos:pos + size], pos + size
    if kind in (9, 10):
        size, element = data[pos] >> 4, data[pos] & 0x0F
        pos += 1
        if size == 15:
            size, pos = _varint(data, pos)
        items = []
        for _ in range(size):
            if element in (1, 2):
                item, pos = data[pos] == 1, pos + 1
            else:
                item, pos = _thrift_value(data, pos, element)
            items.append(item)
        return items, pos
    if kind == 12:
        return _thrift_struct(data, pos)
    raise ValueError(f"Thrift compact type {kind} is not in a Parquet page header")


def _thrift_struct(data: bytes, pos: int) -> tuple[dict, int]:
    fields, last = {}, 0
    while data[pos]:
        delta, kind = data[pos] >> 4, data[pos] & 0x0F
        pos += 1
        if delta:
            last += delta
        else:
            last, pos = _thrift_value(data, pos, 4)
        fields[last], pos = _thrift_value(data, pos, kind)
    return fields, pos + 1


def _page_rows(path: str, column: str, row_group: int = 0) -> list[int]:
    """The rows of each data page of ``column`` in ``row_group`` (a flat column: a value a row)."""
    meta = pq.ParquetFile(path).metadata.row_group(row_group)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(chunk.total_compressed_size)
    rows, pos = [], 0
    while pos < len(data):
        header, pos = _thrift_struct(data, pos)  # PageHeader
        if 5 in header:  # data_page_header.num_values
            rows.append(header[5][1])
        elif 8 in header:  # data_page_header_v2.num_rows
            rows.append(header[8][3])
        pos += header[3]  # compressed_page_size
    assert pos == len(data) and sum(rows) == meta.num_rows
    return rows


def test_image_bytes_are_written_in_pages_of_a_few_images(tmp_path):
    import apache_beam as beam

    from pipeline.options import beam_options
    from pipeline.parquet_beam import WriteToParquet
    from pipeline.runners import make_pipeline

    rng = np.random.default_rng(0)
    # 20 kB images: 64 of them pass pyarrow's 1 MB page size (the check comes every write_batch_size values)
    table = schemas.to_table([dict(_candidate(i), image_bytes=rng.bytes(20_000)) for i in range(176)], "candidates")
    pyarrow_default = tmp_path / "default.parquet"
    pq.write_table(table, pyarrow_default, row_group_size=128)
    assert _page_rows(str(pyarrow_default), "image_bytes") == [128]  # a page per 1,024 values: the whole group
    local = schemas.write_table(table, str(tmp_path / "local.parquet"), "candidates", row_group_size=128)
    assert [_page_rows(local, "image_bytes", g) for g in (0, 1)] == [[64, 64], [48]]
    assert _page_rows(local, "candidate_id") == [128]  # the small columns: one page a group, as before
    with make_pipeline(beam_options([])) as pipeline:  # LAIT's local runner, as the stages run
        (pipeline | beam.Create(table.to_pylist())
         | WriteToParquet(str(tmp_path / "beam" / "part"), table.schema, file_name_suffix=".parquet", num_shards=1))
    beam_file = next((tmp_path / "beam").glob("*.parquet"))
    assert max(_page_rows(str(beam_file), "image_bytes")) == schemas.io.IMAGE_WRITE_BATCH_SIZE
    for path in (local, str(beam_file)):
        assert schemas.read_table(path, "candidates").to_pylist() == table.to_pylist()


@pytest.mark.parametrize("kind", ["regions", "captions", "rejected"])
def test_tables_without_image_bytes_are_written_as_before(tmp_path, kind):
    rows = {"regions": [_region_row(n, 8) for n in range(1, 30)],
            "captions": [{"caption_id": f"k{i}", "image_id": f"i{i}", "caption": f"two cats {i}"} for i in range(30)],
            "rejected": [schemas.rejected_row("filter", "text_too_short", None, candidate_id=f"c{i}") for i in range(30)]}
    table = schemas.to_table(rows[kind], kind, **({"feature_dim": 8} if kind == "regions" else {}))
    path = schemas.write_table(table, str(tmp_path / "lait.parquet"), kind)
    before = tmp_path / "before.parquet"
    pq.write_table(table, before, row_group_size=1024, compression="zstd",
                   use_dictionary=schemas.dictionary_columns(table.schema))
    assert open(path, "rb").read() == before.read_bytes()


def _captions_with_a_null(tmp_path, column):
    """A captions file as plain pyarrow writes it (every column nullable), one ``column`` value null."""
    rows = [{"caption_id": f"c{i}", "image_id": f"img{i}", "caption": "a red circle", "split": "test"}
            for i in range(1, 4)]
    rows[1][column] = None
    folder = tmp_path / "captions"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-00000.parquet")
    return str(folder)


@pytest.mark.parametrize("column", ["caption_id", "image_id", "caption"])
def test_nulls_in_a_non_nullable_column_are_refused_naming_file_column_and_count(tmp_path, column):
    path = _captions_with_a_null(tmp_path, column)
    table = schemas.read_table(path, "captions")  # the schema check alone passes: the file declares nullable
    with pytest.raises(schemas.SchemaMismatchError) as info:
        check_not_null(table, "captions", path)
    assert str(info.value) == f"{path}: column {column!r} has 1 null value, which the captions schema does not allow"
    assert info.value.column == column and isinstance(info.value, ValueError)
    check_not_null(table.drop_columns([column]), "captions", path)  # only the columns read are checked


def test_nullable_columns_and_lait_written_files_pass_the_null_check(tmp_path):
    rows = [{"caption_id": "c", "image_id": "i", "caption": "a red circle", "split": None}]
    check_not_null(schemas.to_table(rows, "captions"), "captions")  # split may be null
    rejected = schemas.to_table([schemas.rejected_row("filter", "text_too_short", detail=None)], "rejected")
    check_not_null(rejected, "rejected")
    # lait's own writers use the contract schema: Parquet refuses a null in a required column
    bad = schemas.to_table([{**rows[0], "image_id": None}], "captions")
    with pytest.raises(pa.ArrowInvalid, match="non-nullable"):
        schemas.write_table(bad, str(tmp_path / "captions" / "part-00000.parquet"), "captions")


@pytest.mark.parametrize("column", ["caption_id", "image_id"])
def test_eval_refuses_a_captions_file_with_null_ids_in_one_line(tmp_path, column):
    """A null id crashed `lait eval` (TypeError sorting the captions); now a ValueError the command prints."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from model.eval import EvalSet

    path = _captions_with_a_null(tmp_path, column)
    schemas.write_table(schemas.to_table([_region_row(n, 8) for n in range(1, 4)], "regions", feature_dim=8),
                        str(tmp_path / "regions" / "part-00000.parquet"), "regions")
    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "red": 2, "circle": 3}, unk_token="[UNK]")).to_str()
    with pytest.raises(ValueError, match=f"captions: column '{column}' has 1 null value") as info:
        EvalSet(str(tmp_path / "regions"), path, "test", tokenizer, 16, 4, 8)
    assert "\n" not in str(info.value)
    from model.data import load_captions

    with pytest.raises(ValueError, match=f"column '{column}' has 1 null value"):  # training reads them so too
        load_captions(path, None)


def test_files_written_whole_get_the_permissions_of_a_file_opened_for_writing(tmp_path):
    """The atomic writers' temporary files come from tempfile.mkstemp, owner-only (0o600): renamed into place, a
    run's stats.json, eval.json or checkpoints were unreadable to the other users of a shared run folder."""
    import os
    import stat

    from model.train import save_checkpoint
    from schemas import write_json_atomically

    with open(tmp_path / "plain.json", "w") as handle:
        handle.write("{}")
    expected = stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode)
    write_json_atomically(str(tmp_path / "stats.json"), {"in": 1})
    save_checkpoint(str(tmp_path / "last.pt"), {"step": 1})
    for name in ("stats.json", "last.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name
    assert expected & 0o044  # readable by others under this machine's umask: the check can fail


def _non_null_items(field_type: pa.DataType) -> pa.DataType:
    """``list<fixed_size_list<T>[n]>`` with its innermost items declared non-nullable, as some writers declare them."""
    inner = field_type.value_type
    return pa.list_(pa.list_(pa.field("item", inner.value_type, nullable=False), inner.list_size))


def test_non_null_coordinates_in_boxes_match_as_in_features(tmp_path):
    """Fixed vs fixed returned `open_dims and ...`: boxes declared `fixed_size_list<item: float not null>[4]` were
    refused for the items' nullability alone, while features (open width) and every other column ignore it."""
    table = schemas.to_table([_region_row(2, 8)], "regions", feature_dim=8)
    for name in ("boxes", "features"):
        column = table.column(name).cast(_non_null_items(table.schema.field(name).type))
        table = table.set_column(table.schema.get_field_index(name), name, column)
    schemas.validate_schema(table.schema, "regions")
    pq.write_table(table, tmp_path / "strict.parquet")
    assert schemas.read_table(str(tmp_path / "strict.parquet"), "regions").num_rows == 1
    five = pa.list_(pa.list_(pa.field("item", pa.float32(), nullable=False), 5))
    with pytest.raises(schemas.SchemaMismatchError, match="'boxes'"):  # the width still counts
        schemas.validate_schema(table.schema.set(table.schema.get_field_index("boxes"), pa.field("boxes", five)),
                                "regions")


def test_a_mismatch_shows_the_open_feature_width_as_d():
    """The message printed the schema's stand-in width, `fixed_size_list<item: halffloat>[1]>`, as if 1 were
    required."""
    good = schemas.schema_for("regions", feature_dim=8)
    as_f32 = good.set(good.get_field_index("features"), pa.field("features", pa.list_(pa.list_(pa.float32(), 8))))
    with pytest.raises(schemas.SchemaMismatchError) as info:
        schemas.validate_schema(as_f32, "regions")
    assert str(info.value).endswith("expects list<item: fixed_size_list<item: halffloat>[D]>")
    three = good.set(good.get_field_index("boxes"), pa.field("boxes", pa.list_(pa.list_(pa.float32(), 3))))
    with pytest.raises(schemas.SchemaMismatchError, match=r"expects list<item: fixed_size_list<item: float>\[4\]>$"):
        schemas.validate_schema(three, "regions")


@pytest.mark.parametrize("key", [b"lait.schema", b"lait.schema_version"])
def test_metadata_that_is_not_utf8_is_refused_naming_file_and_key(tmp_path, key):
    """A kind or version that is not UTF-8 text failed every reader with a bare codec error naming nothing; it is
    refused now as an unknown kind or version is."""
    pairs = schemas.to_table([{"pair_id": "p", "image_id": "i", "caption": "x y z"}], "pairs")
    meta = {b"lait.schema": b"pairs", b"lait.schema_version": b"1", key: b"pa\xffirs"}
    pq.write_table(pairs.replace_schema_metadata(meta), tmp_path / "part-00000.parquet")
    match = rf"part-00000.parquet: its {key.decode()} metadata is not UTF-8 text \(b'pa\\xffirs'\)"
    with pytest.raises(schemas.SchemaMismatchError, match=match):
        schemas.read_table(str(tmp_path), "pairs")
    kind = schemas.detect_kind(pq.read_schema(tmp_path / "part-00000.parquet"))
    assert kind == ("pa\\xffirs" if key == b"lait.schema" else "pairs")
