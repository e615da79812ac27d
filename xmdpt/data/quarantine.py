"""Stage tables on fsspec storage, and the quarantine table every data stage writes.

A table is a Parquet directory (``{prefix}/{name}/part-00000.parquet``) readable with
``pyarrow.dataset.dataset(path, filesystem=fs)``; a stage writes its tables into a fresh
content-addressed prefix (a leftover from an interrupted run is deleted first), so nothing is
ever appended to an old output.

Quarantined rows (:data:`xmdpt.data.schema.QUARANTINE_SCHEMA`) name the bad row (``row_key``: a
path, ``file.csv:line 17``, a pair id) and say why it was set aside; the rest of the data goes on.
"""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from xmdpt.data.schema import QUARANTINE_SCHEMA, REASON, ROW_KEY, STAGE
from xmdpt.core.storage import filesystem, is_url, join

logger = logging.getLogger(__name__)

PART_NAME = "part-00000.parquet"


class CorruptTableError(ValueError):
    """A stage table exists but cannot be trusted: an unreadable/damaged Parquet file or a row
    count that differs from its manifest. The message names the file."""


# Every page carries a CRC32 (written by :func:`write_table`, verified by :func:`read_table`), so
# damaged bytes inside a page fail the read instead of decoding to wrong values.
_READ_FORMAT = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True))


def _os_error(e: OSError, message: str) -> OSError:
    """``message`` as an OSError of the same kind (``OSError(errno, ...)`` picks the subclass)."""
    return OSError(e.errno, message) if e.errno else OSError(message)


def fresh_prefix(prefix: str) -> str:
    """Delete whatever an earlier (possibly interrupted) run left under ``prefix``; return it.

    Raises:
        OSError: the prefix cannot be created or cleared (read-only or full storage, a file where a
            folder is expected); the message names ``prefix``.
    """
    fs, path = filesystem(prefix)
    try:
        if fs.exists(path):
            logger.info("removing previous output under %s", prefix)
            fs.rm(path, recursive=True)
        fs.makedirs(path, exist_ok=True)
    except OSError as e:
        raise _os_error(e, f"{prefix}: cannot prepare the stage output folder ({e.strerror or e}); "
                           "check paths.storage_root") from e
    return prefix


def write_table(prefix: str, name: str, table: pa.Table) -> dict:
    """Write ``table`` as ``{prefix}/{name}/`` (one Parquet file, page checksums on); return its
    manifest entry ``{"uri", "rows", "columns"}``.

    Raises:
        OSError: the file cannot be written (no space, no permission, ...); the message names it and
            the partial file is removed.
    """
    uri = join(prefix, name)
    fs, path = filesystem(uri)
    file_path = f"{path.rstrip('/')}/{PART_NAME}"
    try:
        fs.makedirs(path, exist_ok=True)
        with fs.open(file_path, "wb") as f:
            pq.write_table(table, f, write_page_checksum=True)
    except OSError as e:
        try:
            if fs.exists(file_path):
                fs.rm(file_path)
        except OSError:
            pass
        raise _os_error(e, f"{join(uri, PART_NAME)}: cannot write table {name!r} ({e.strerror or e})") from e
    logger.info("wrote %d rows to %s", table.num_rows, uri)
    return {"uri": uri, "rows": table.num_rows, "columns": table.schema.names}


def read_table(uri: str, schema: pa.Schema | None = None, rows: int | None = None) -> pa.Table:
    """Read a stage table written by :func:`write_table` (any fsspec URL), file by file.

    Args:
        uri: the table folder (a manifest entry's ``uri``).
        schema: read with this Arrow schema (default: the files' own).
        rows: the row count the manifest records; checked when given.

    Raises:
        FileNotFoundError: no table at ``uri``.
        CorruptTableError: a file is truncated, overwritten or fails its page checksums, or the
            table holds a different number of rows than ``rows``; the message names the file.
    """
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: table not found; rerun the stage that writes it (dvc repro)")
    files = sorted(f for f in fs.find(path)
                   if f.endswith(".parquet") and not posixpath.basename(f).startswith((".", "_")))
    if not files:
        raise CorruptTableError(f"{uri}: no Parquet file in the table folder; rerun the stage that writes it")
    parts = []
    for f in files:
        try:
            parts.append(pads.dataset(f, filesystem=fs, format=_READ_FORMAT, schema=schema).to_table())
        except (OSError, pa.ArrowException) as e:
            shown = f if not is_url(uri) else fs.unstrip_protocol(f)
            raise CorruptTableError(f"{shown}: unreadable Parquet file ({e}); "
                                    "rerun the stage that writes it (dvc repro --force)") from e
    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="default")
    if rows is not None and table.num_rows != rows:
        raise CorruptTableError(f"{uri}: {table.num_rows} rows in {len(files)} file(s) "
                                f"({', '.join(posixpath.basename(f) for f in files)}), the manifest says {rows}; "
                                "rerun the stage that writes it (dvc repro --force)")
    return table


def quarantine_table(stage: str, rows: Iterable[tuple[str, str]]) -> pa.Table:
    """``(row_key, reason)`` pairs -> a :data:`QUARANTINE_SCHEMA` table tagged with ``stage``."""
    rows = list(rows)
    return pa.Table.from_pydict({
        STAGE: [stage] * len(rows),
        ROW_KEY: [k for k, _ in rows],
        REASON: [r for _, r in rows],
    }, schema=QUARANTINE_SCHEMA)


def summarize_reasons(table: pa.Table, limit: int = 20) -> dict[str, int]:
    """Count quarantined rows by the kind of reason (the text after the row key, digits masked)."""
    kinds: Counter = Counter()
    for reason in table.column(REASON).to_pylist():
        kinds[_reason_kind(reason)] += 1
    return dict(kinds.most_common(limit))


def _reason_kind(reason: str) -> str:
    tail = reason.rsplit(": ", 1)[-1]
    return "".join("#" if c.isdigit() else c for c in tail)[:120]
