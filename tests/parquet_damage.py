"""Damage a Parquet file the way a bad disk or a torn copy does (shared by the corruption tests)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def zero_inside_a_page(path: Path, column: str) -> None:
    """Overwrite the last 8 bytes of ``column``'s first column chunk (inside a page body, not a header)."""
    meta = pq.ParquetFile(path).metadata
    top = [meta.row_group(0).column(i).path_in_schema.split(".")[0] for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(top.index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    end = start + chunk.total_compressed_size
    data = bytearray(path.read_bytes())
    data[end - 8:end] = bytes(8)
    path.write_bytes(bytes(data))
