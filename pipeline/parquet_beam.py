"""Beam's Parquet writer with LAIT's encoding choice: dictionary encoding on the string columns only, pages of a
few images (``schemas.io.parquet_options``).

``beam.io.WriteToParquet`` leaves pyarrow's default, a dictionary for every column. On the columns of
unique values LAIT writes (image bytes, float16 region features, boxes) that buys nothing and makes
every later read several times slower (``schemas.dictionary_columns``). ``WriteToParquet`` here is Beam's
transform with its sink opening the file writer itself; everything else (sharding, temp files,
finalisation) stays Beam's.
"""
from __future__ import annotations

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink, parquetio

from schemas.io import parquet_options


class _Sink(parquetio._ParquetSink):
    """Beam's Parquet sink, writing with ``schemas.io.parquet_options``."""

    def open(self, temp_path):
        self._file_handle = filebasedsink.FileBasedSink.open(self, temp_path)
        return pq.ParquetWriter(
            self._file_handle, self._schema, compression=self._codec, **parquet_options(self._schema),
            use_deprecated_int96_timestamps=getattr(self, "_use_deprecated_int96_timestamps", False),
            use_compliant_nested_type=getattr(self, "_use_compliant_nested_type", False),
        )


class WriteToParquet(beam.io.WriteToParquet):
    """``beam.io.WriteToParquet`` (same arguments) whose files are encoded as ``schemas.write_table``'s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if type(self._sink) is not parquetio._ParquetSink:  # a Beam whose writer changed shape: say so
            raise TypeError(f"unexpected Beam Parquet sink {type(self._sink).__name__}; update pipeline.parquet_beam")
        self._sink.__class__ = _Sink
