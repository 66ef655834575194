"""Stage-boundary contracts: one explicit pyarrow schema per dataset kind, readers and writers.

Every LAIT stage talks to the next only through Parquet datasets of these kinds. Each file carries
``lait.schema`` (the kind) and ``lait.schema_version`` in its Parquet key-value metadata, and every
reader checks the columns it finds against the contract, naming the first column that differs.
"""
from schemas.core import (
    ANY_DIM,
    KINDS,
    SCHEMA_VERSION,
    SchemaMismatchError,
    candidates_schema,
    captions_schema,
    detect_kind,
    pairs_schema,
    regions_schema,
    rejected_schema,
    schema_for,
    validate_schema,
)
from schemas.io import (
    ShardWriter,
    count_rows,
    dictionary_columns,
    iter_batches,
    join_path,
    list_parquet_files,
    new_file_mode,
    open_dataset,
    path_type,
    read_table,
    rejected_row,
    subfolders,
    to_table,
    write_atomically,
    write_json_atomically,
    write_table,
)

__all__ = [
    "ANY_DIM",
    "KINDS",
    "SCHEMA_VERSION",
    "SchemaMismatchError",
    "ShardWriter",
    "candidates_schema",
    "captions_schema",
    "count_rows",
    "detect_kind",
    "dictionary_columns",
    "iter_batches",
    "join_path",
    "list_parquet_files",
    "new_file_mode",
    "open_dataset",
    "pairs_schema",
    "path_type",
    "read_table",
    "regions_schema",
    "rejected_row",
    "rejected_schema",
    "schema_for",
    "subfolders",
    "to_table",
    "validate_schema",
    "write_atomically",
    "write_json_atomically",
    "write_table",
]
