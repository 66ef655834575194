"""The pyarrow schemas of every stage boundary and the rules for checking them."""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
META_KIND = b"lait.schema"
META_VERSION = b"lait.schema_version"

#: Stand-in for a fixed-size-list length that the contract leaves open (feature width per detector).
ANY_DIM = -1
#: The columns whose fixed-size-list width the contract leaves open, by kind: only the region features
#: (their width is the detector's); boxes stay [n, 4].
OPEN_WIDTH_COLUMNS = {"regions": ("features",)}


class SchemaMismatchError(ValueError):
    """A dataset does not match its LAIT contract; the message names the column that differs."""

    def __init__(self, message: str, column: str | None = None):
        super().__init__(message)
        self.column = column


def _with_meta(fields: list[pa.Field], kind: str) -> pa.Schema:
    return pa.schema(fields, metadata={META_KIND: kind.encode(), META_VERSION: str(SCHEMA_VERSION).encode()})


def candidates_schema() -> pa.Schema:
    """One row per (page, image, text) found by the crawler or WARC reader, image bytes inline."""
    return _with_meta(
        [
            pa.field("candidate_id", pa.string(), nullable=False),  # sha1 of page_url, image_url, alt, title (+ figcaption to tell repeats apart)
            pa.field("image_id", pa.string(), nullable=False),  # sha256 hex of image_bytes
            pa.field("page_url", pa.string(), nullable=False),
            pa.field("image_url", pa.string(), nullable=False),
            pa.field("alt", pa.string()),
            pa.field("title", pa.string()),
            pa.field("figcaption", pa.string()),
            pa.field("page_lang", pa.string()),  # <html lang> or Content-Language, as declared
            pa.field("page_title", pa.string()),
            pa.field("page_text", pa.string()),  # a sample of the page's visible text (language evidence)
            pa.field("http_status", pa.int32()),
            pa.field("content_type", pa.string()),
            pa.field("image_bytes", pa.binary()),
            pa.field("width", pa.int32()),  # after EXIF orientation
            pa.field("height", pa.int32()),
            pa.field("format", pa.string()),  # Pillow format name: JPEG, PNG, WEBP, ...
            pa.field("num_bytes", pa.int64()),
            pa.field("fetched_at", pa.timestamp("ms", tz="UTC")),
            pa.field("source", pa.string(), nullable=False),  # crawl | warc
        ],
        "candidates",
    )


def pairs_schema() -> pa.Schema:
    """One kept (image, caption) pair after the filter stage."""
    return _with_meta(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("candidate_id", pa.string()),  # the candidate this pair came from
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("text_source", pa.string()),  # alt | title | figcaption
            pa.field("lang", pa.string()),
            pa.field("lang_score", pa.float32()),
            pa.field("relevance", pa.float32()),  # learned image-text relevance; null when not scored
            pa.field("phash", pa.string()),  # perceptual hash, 16 hex digits
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("image_bytes", pa.binary()),
            pa.field("page_url", pa.string()),
            pa.field("image_url", pa.string()),
        ],
        "pairs",
    )


def rejected_schema() -> pa.Schema:
    """A record that left a stage without becoming output, with a machine-readable reason."""
    return _with_meta(
        [
            pa.field("stage", pa.string(), nullable=False),  # crawl | filter | relevance | features | ...
            pa.field("reason", pa.string(), nullable=False),  # snake_case, e.g. text_too_short
            pa.field("detail", pa.string()),
            pa.field("candidate_id", pa.string()),
            pa.field("pair_id", pa.string()),
            pa.field("image_id", pa.string()),
            pa.field("page_url", pa.string()),
            pa.field("image_url", pa.string()),
            pa.field("caption", pa.string()),
        ],
        "rejected",
    )


def regions_schema(feature_dim: int = ANY_DIM) -> pa.Schema:
    """Detector output per image: boxes in original pixels, float16 pooled features, class labels."""
    feature_type = pa.list_(pa.float16(), feature_dim) if feature_dim != ANY_DIM else pa.list_(pa.float16(), 1)
    schema = _with_meta(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("image_width", pa.int32()),
            pa.field("image_height", pa.int32()),
            pa.field("num_boxes", pa.int32()),
            pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),  # [n, 4] x1 y1 x2 y2
            pa.field("features", pa.list_(feature_type)),  # [n, D]
            pa.field("class_ids", pa.list_(pa.int32())),  # [n] top class (0 = first object class)
            pa.field("class_scores", pa.list_(pa.float32())),  # [n]
            pa.field("topk_class_ids", pa.list_(pa.list_(pa.int32()))),  # [n, k]
            pa.field("topk_class_probs", pa.list_(pa.list_(pa.float32()))),  # [n, k]
            pa.field("detector", pa.string()),
        ],
        "regions",
    )
    return schema


def captions_schema() -> pa.Schema:
    """Captions of training/evaluation sets, where one image may have several."""
    return _with_meta(
        [
            pa.field("caption_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("split", pa.string()),  # train | val | test
        ],
        "captions",
    )


KINDS = {
    "candidates": candidates_schema,
    "pairs": pairs_schema,
    "rejected": rejected_schema,
    "regions": regions_schema,
    "captions": captions_schema,
}


def schema_for(kind: str, **kwargs) -> pa.Schema:
    """The contract schema of a dataset kind (``regions`` takes ``feature_dim``)."""
    try:
        factory = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(KINDS)}") from None
    return factory(**kwargs)


def _type_matches(actual: pa.DataType, expected: pa.DataType, open_dims: bool) -> bool:
    """Type equality where, under ``open_dims`` (a column of ``OPEN_WIDTH_COLUMNS``), a fixed-size list of
    any length matches.

    As for lists, a fixed-size list's item nullability and name are not compared (``float not null`` is the
    same data as ``float``), only its width and item type. A timestamp of any unit and zone matches a
    timestamp: an Arrow timestamp with a zone holds UTC instants whatever the zone, and a naive one (Spark's
    INT96, read as ``timestamp[ns]``) holds UTC by Spark's convention; the readers cast it to the contract's
    type (``schemas.io.open_dataset``). Spark writes microseconds; without this its folders, which
    docs/filter.md names as input, were refused for ``fetched_at``, a column no stage decides by."""
    if actual == expected:
        return True
    if pa.types.is_timestamp(expected) and pa.types.is_timestamp(actual):
        return True
    if pa.types.is_fixed_size_list(expected) and pa.types.is_fixed_size_list(actual):
        return (open_dims or actual.list_size == expected.list_size) \
            and _type_matches(actual.value_type, expected.value_type, open_dims)
    for check in (pa.types.is_list, pa.types.is_large_list):
        if check(expected) and check(actual):
            return _type_matches(actual.value_type, expected.value_type, open_dims)
    # Parquet readers may widen string/binary to their large variants; treat them as equal.
    pairs = [(pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())]
    return any({actual, expected} == {a, b} for a, b in pairs)


def _type_text(expected: pa.DataType, open_dims: bool) -> str:
    """How a mismatch message shows a contract type: an open width as ``[D]``, not the ``[1]`` that stands in
    for it in the schema (``regions_schema``), which would read as the width required."""
    return str(expected).replace(">[1]", ">[D]") if open_dims else str(expected)


def _meta_text(meta: dict, key: bytes, where: str, expected: str) -> str | None:
    """The text of a metadata value (None when absent); one that is not UTF-8 text is refused as a kind or
    version this LAIT does not know would be, naming the file and key (a bare codec error named neither)."""
    value = meta.get(key)
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        shown = repr(value[:40]) + ("..." if len(value) > 40 else "")
        raise SchemaMismatchError(f"{where}: its {key.decode()} metadata is not UTF-8 text ({shown}), "
                                  f"expected {expected}") from None


def validate_schema(actual: pa.Schema, kind: str, where: str = "dataset") -> None:
    """Raise ``SchemaMismatchError`` naming the first contract column that is missing or mistyped.

    Extra columns are allowed (a stage may carry more than the contract); the contract's columns
    must be present with their types. Files that declare a kind or version in their metadata must
    declare this kind and this version.
    """
    expected = schema_for(kind)
    meta = actual.metadata or {}
    declared = _meta_text(meta, META_KIND, where, repr(kind))
    if declared is not None and declared != kind:
        raise SchemaMismatchError(f"{where}: is a {declared!r} dataset, expected {kind!r}")
    version = _meta_text(meta, META_VERSION, where, f"version {SCHEMA_VERSION}")
    if version is not None and version != str(SCHEMA_VERSION):
        raise SchemaMismatchError(
            f"{where}: schema version {version} of {kind!r}, this LAIT reads version {SCHEMA_VERSION}"
        )
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0:
            raise SchemaMismatchError(f"{where}: missing column {field.name!r} required by the {kind} schema", field.name)
        found = actual.field(index).type
        open_dims = field.name in OPEN_WIDTH_COLUMNS.get(kind, ())
        if not _type_matches(found, field.type, open_dims=open_dims):
            raise SchemaMismatchError(f"{where}: column {field.name!r} has type {found}, the {kind} schema expects "
                                      f"{_type_text(field.type, open_dims)}", field.name)


def check_not_null(data: pa.Table | pa.RecordBatch, kind: str, where: str = "dataset") -> None:
    """Raise ``SchemaMismatchError`` naming the first column of ``data`` that the ``kind`` contract marks
    non-nullable and that holds nulls, and how many.

    ``validate_schema`` sees a file's schema only, and a file written with plain pyarrow declares every
    column nullable: its nulls show in the data. Arrow keeps each array's null count, so this costs next
    to nothing once the columns are read; contract columns that ``data`` lacks are not checked here.
    """
    for field in schema_for(kind):
        if field.nullable or field.name not in data.schema.names:
            continue
        nulls = data.column(field.name).null_count
        if nulls:
            raise SchemaMismatchError(f"{where}: column {field.name!r} has {nulls} null value{'s' * (nulls != 1)}, "
                                      f"which the {kind} schema does not allow", field.name)


def missing_image_id(image_id: str | None) -> bool:
    """Whether a row has no image id: null, empty or only whitespace (``str.strip``'s whitespace).

    The one rule for every stage that keys rows by image (``lait features`` rejects such a row as
    ``image_id_missing``; an empty id would stand for every image without one, and all but the first vanish
    as duplicates, uncounted) and for the audit that recounts it. It lives here, free of torch, so the audit
    can share it rather than copy it.
    """
    return image_id is None or not image_id.strip()


def detect_kind(schema: pa.Schema) -> str | None:
    """The dataset kind a schema declares in its metadata, else the first kind whose columns it has.

    A declared kind that is not UTF-8 text comes back with its bytes escaped: a kind this LAIT does not know,
    which `lait inspect` describes, and the readers refuse (``validate_schema``)."""
    meta = schema.metadata or {}
    if META_KIND in meta:
        return meta[META_KIND].decode("utf-8", "backslashreplace")
    for kind in KINDS:
        try:
            validate_schema(schema, kind)
        except SchemaMismatchError:
            continue
        return kind
    return None
