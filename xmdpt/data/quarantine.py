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
from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from xmdpt.data.schema import QUARANTINE_SCHEMA, REASON, ROW_KEY, STAGE
from xmdpt.storage import filesystem, join

logger = logging.getLogger(__name__)

PART_NAME = "part-00000.parquet"


def fresh_prefix(prefix: str) -> str:
    """Delete whatever an earlier (possibly interrupted) run left under ``prefix``; return it."""
    fs, path = filesystem(prefix)
    if fs.exists(path):
        logger.info("removing previous output under %s", prefix)
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)
    return prefix


def write_table(prefix: str, name: str, table: pa.Table) -> dict:
    """Write ``table`` as ``{prefix}/{name}/`` (one Parquet file); return its manifest entry."""
    uri = join(prefix, name)
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path.rstrip('/')}/{PART_NAME}", "wb") as f:
        pq.write_table(table, f)
    logger.info("wrote %d rows to %s", table.num_rows, uri)
    return {"uri": uri, "rows": table.num_rows, "columns": table.schema.names}


def read_table(uri: str, schema: pa.Schema | None = None) -> pa.Table:
    """Read a stage table written by :func:`write_table` (any fsspec URL)."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: table not found; rerun the stage that writes it (dvc repro)")
    return pads.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table()


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
