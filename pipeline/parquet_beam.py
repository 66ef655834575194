"""Beam's Parquet writer with LAIT's encoding choice: dictionary encoding on the string columns only, pages of a
few images (``schemas.io.parquet_options``).

``beam.io.WriteToParquet`` leaves pyarrow's default, a dictionary for every column. On the columns of
unique values LAIT writes (image bytes, float16 region features, boxes) that buys nothing and makes
every later read several times slower (``schemas.dictionary_columns``). ``WriteToParquet`` here is Beam's
transform with its sink opening the file writer itself; everything else (sharding, temp files,
finalisation) stays Beam's, except where Beam reads the output path as a pattern: an output folder named with
``[``, ``*`` or ``?`` (``r7 [v2]/filter``) is looked up and cleaned as written.
"""
from __future__ import annotations

import logging

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink, parquetio
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from pipeline.outputs import delete_exactly, files_under, has_glob, literal_pattern
from schemas.io import parquet_options

logger = logging.getLogger(__name__)


class _Sink(parquetio._ParquetSink):
    """Beam's Parquet sink, writing with ``schemas.io.parquet_options``."""

    def open(self, temp_path):
        self._file_handle = filebasedsink.FileBasedSink.open(self, temp_path)
        return pq.ParquetWriter(
            self._file_handle, self._schema, compression=self._codec, **parquet_options(self._schema),
            use_deprecated_int96_timestamps=getattr(self, "_use_deprecated_int96_timestamps", False),
            use_compliant_nested_type=getattr(self, "_use_compliant_nested_type", False),
        )

    # Beam finds its final shards by a pattern made of the output path and the shard template, and its temporary
    # shards by a pattern of the temporary folder: below, the output path's part is taken as written.

    def _final_name_rest(self, num_shards, w=None):
        """The part of Beam's final-name pattern after the output prefix (``-*-of-00002.parquet``)."""
        return super()._get_final_name_glob(num_shards, w)[len(self.file_path_prefix.get()):]

    def _get_final_name_glob(self, num_shards, w=None):
        return literal_pattern(self.file_path_prefix.get()) + self._final_name_rest(num_shards, w)

    def pre_finalize(self, init_result, writer_results):
        prefix = self.file_path_prefix.get()
        if not has_glob(prefix):
            return super().pre_finalize(init_result, writer_results)
        stale = files_under(prefix, self._final_name_rest(len(list(writer_results))))
        if stale:
            logger.warning("Deleting %d existing files in target path matching: %s", len(stale),
                           self.shard_name_glob_format)
            delete_exactly(stale)

    def _check_state_for_finalize_write(self, writer_results, num_shards, window=None):
        """Beam's checks, each file looked up by name when the output path would read as a pattern."""
        if not has_glob(self.file_path_prefix.get()) or not writer_results:
            return super()._check_state_for_finalize_write(writer_results, num_shards, window)
        src_files, dst_files, renamed, num_skipped = [], [], [], 0
        for shard_num, src in enumerate(writer_results):
            dst = self._get_final_name(shard_num, num_shards, window)
            src_exists, dst_exists = FileSystems.exists(src), FileSystems.exists(dst)
            if not src_exists and not dst_exists:
                raise BeamIOError(f"src and dst files do not exist. src: {src}, dst: {dst}")
            if not src_exists:  # renamed by an earlier attempt
                num_skipped += 1
            elif dst_exists and FileSystems.checksum(src) == FileSystems.checksum(dst):
                renamed.append(src)  # copied by an earlier attempt: the source is left over
            else:
                src_files.append(src)
                dst_files.append(dst)
        delete_exactly(renamed)  # here, as Beam's finalisation would delete these names as patterns
        self._report_sink_lineage(self._get_final_name_glob(num_shards, window), dst_files)
        return src_files, dst_files, [], num_skipped + len(renamed)

    def finalize_windowed_write(self, init_result, writer_results, unused_pre_finalize_results, w=None):
        yield from super().finalize_windowed_write(init_result, writer_results, unused_pre_finalize_results, w)
        # Beam deletes its temporary folder as a pattern, which a local "[" in the name makes no match: it logs
        # that and leaves the folder behind.
        if has_glob(init_result) and "://" not in init_result and FileSystems.exists(init_result):
            delete_exactly([init_result])


class WriteToParquet(beam.io.WriteToParquet):
    """``beam.io.WriteToParquet`` (same arguments) whose files are encoded as ``schemas.write_table``'s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if type(self._sink) is not parquetio._ParquetSink:  # a Beam whose writer changed shape: say so
            raise TypeError(f"unexpected Beam Parquet sink {type(self._sink).__name__}; update pipeline.parquet_beam")
        self._sink.__class__ = _Sink
