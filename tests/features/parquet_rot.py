"""Bit rot for the robustness tests: a Parquet file whose footer is intact but whose pages are not."""
import pyarrow.parquet as pq


def corrupt_pages(path, row_group: int, *columns: str, skip: int = 40) -> None:
    """Flip the bits of ``columns``' pages in one row group of ``path``, past the first ``skip`` bytes of each
    column chunk (0: its page headers too), and short of its last 8; the footer stays readable."""
    data = bytearray(open(path, "rb").read())
    group = pq.ParquetFile(path).metadata.row_group(row_group)
    chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    for name in columns:
        chunk = chunks[name]
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        for i in range(start + skip, start + chunk.total_compressed_size - 8):
            data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))
