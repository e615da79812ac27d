"""Batch generation on Ray Data: a table of (source, pose) rows in, PNGs + a Parquet manifest out.

``xmdpt generate-batch --model URI --pairs TABLE --out URI`` and the `evaluate` stage share this
code path: :func:`map_generation` runs an actor pool of
:class:`~xmdpt.sampling.generation_actor.GenerationActor` (each actor holding one
:class:`XMDPTPipeline`) that turns batches of rows into images with **one seed per row**, so an
image does not depend on the batch it lands in, on the number of actors or on a resumed run.

The pairs table (CSV or Parquet, any fsspec URI):

============  =========================================================================================
column        meaning
============  =========================================================================================
``source``    the person photo: a path / URI (relative paths are resolved against the table's folder)
``pose``      a photo to take the pose from, a pose JSON / PIDM ``.txt`` / ``FILE.csv::NAME`` path, or
              inline pose JSON ``{"format": "coco18", "image_size": [H, W], "keypoints": [...18]}``
``id``        optional: the output name (``images/<id>.png``); default ``row-<row number>``
``seed``      optional: this row's seed; default ``--seed`` + row number
============  =========================================================================================

The output folder::

    <out>/images/<id>.png                 one PNG per generated row
    <out>/manifest/part-*.parquet         id, row, source, pose, seed, model name/version/uri, output, ...
    <out>/quarantine/part-*.parquet       id, row, source, pose, reason   (rows that could not be made)
    <out>/summary.json                    counts of this run and of the folder

A rerun over the same ``--out`` skips every id already in the manifest or the quarantine (resume
after a killed run: nothing is generated or listed twice), so ``rows = generated + quarantined``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pyarrow as pa

from xmdpt.core.model_resolver import ModelNotFoundError, is_model_uri, pin_model_uri
from xmdpt.core.ray_utils import init_ray
from xmdpt.core.storage import filesystem, is_url, join
from xmdpt.core.tracking import resolve_tracking_uri
from xmdpt.sampling.generation_actor import GenerationActor, is_inline_pose

logger = logging.getLogger(__name__)

__all__ = ["BatchError", "read_pairs_table", "map_generation", "generate_batch", "MANIFEST_SCHEMA",
           "QUARANTINE_SCHEMA", "resolve_model"]

MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("row", pa.int64()), ("source", pa.string()), ("pose", pa.string()), ("seed", pa.int64()),
    ("model_name", pa.string()), ("model_version", pa.string()), ("model_uri", pa.string()), ("output", pa.string()),
    ("steps", pa.int32()), ("guidance", pa.float32()), ("width", pa.int32()), ("height", pa.int32()),
    ("scheduler", pa.string()),
])
QUARANTINE_SCHEMA = pa.schema([("id", pa.string()), ("row", pa.int64()), ("source", pa.string()),
                               ("pose", pa.string()), ("reason", pa.string())])
SEED_STRIDE = 1  # default seed of row r: --seed + r


class BatchError(ValueError):
    """The pairs table or the output location cannot be used (names the file and the reason)."""


# ------------------------------------------------------------------------------------------------
# The model: a URI pinned to a version, once, on the driver
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    uri: str  # what actors load: a local folder, or models:/NAME/VERSION (an alias pinned)
    name: str
    version: str
    run_id: str = ""
    tags: tuple = ()  # the registered version's tags, as (key, value) pairs


def resolve_model(model: str, tracking_uri: Optional[str] = None) -> ModelRef:
    """Pin ``models:/NAME@ALIAS`` to its current version (a moved alias does not change a running job)."""

    if not is_model_uri(model):
        p = Path(model)
        if not p.exists():
            raise ModelNotFoundError(f"model {model!r}: no such folder, and not a model URI")
        meta = {}
        if (p / "pipeline.json").is_file():
            meta = json.loads((p / "pipeline.json").read_text())
        return ModelRef(str(p.resolve()), p.resolve().name, str(meta.get("lineage", {}).get("sha256", ""))[:12])
    if model.startswith("models:/") and not model.startswith("models:/m-"):
        from mlflow import MlflowClient

        uri = resolve_tracking_uri(tracking_uri or "")
        pinned, _ = pin_model_uri(model, uri)
        name, version = pinned[len("models:/"):].split("/", 1)
        mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, version)
        return ModelRef(pinned, name, version, mv.run_id or "", tuple(sorted((mv.tags or {}).items())))
    return ModelRef(model, model, "")


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def _join_relative(base: str, p: str) -> str:
    if is_url(p) or os.path.isabs(p):
        return p
    joined = join(base, p)
    return joined if is_url(joined) else os.path.abspath(joined)  # actors do not share the driver's cwd


def read_pairs_table(uri: str) -> list[dict[str, Any]]:
    """Rows of a CSV/Parquet pairs table: ``row``, ``id``, ``source``, ``pose`` (+ ``seed`` when given).

    Raises:
        BatchError: unreadable table, missing columns, duplicate ids — naming the file.
    """
    import pandas as pd

    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise BatchError(f"{uri}: pairs table not found")
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            df = pq.read_table(io.BytesIO(data)).to_pandas()
        else:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as e:  # pandas/pyarrow raise many types for a damaged file
        raise BatchError(f"{uri}: cannot read the pairs table ({type(e).__name__}: {e})") from None
    missing = [c for c in ("source", "pose") if c not in df.columns]
    if missing:
        raise BatchError(f"{uri}: the pairs table needs columns 'source' and 'pose'; missing {missing} "
                         f"(has {list(df.columns)})")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    rows = []
    for r, rec in enumerate(df.to_dict("records")):
        rid = str(rec.get("id") or "").strip() or f"row-{r:06d}"
        pose = str(rec["pose"]).strip()
        row = {"row": r, "id": rid, "source": _join_relative(base, str(rec["source"]).strip()) if rec["source"] else "",
               "pose": pose if (not pose or is_inline_pose(pose)) else _join_relative(base, pose)}
        seed = rec.get("seed")
        if seed not in (None, "") and not (isinstance(seed, float) and math.isnan(seed)):
            row["seed"] = seed
        rows.append(row)
    ids = [r["id"] for r in rows]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        raise BatchError(f"{uri}: duplicate ids {dups[:10]} (each output is images/<id>.png)")
    bad = [r["id"] for r in rows if "/" in r["id"] or r["id"] in (".", "..")]
    if bad:
        raise BatchError(f"{uri}: ids must be plain file names, got {bad[:10]}")
    return rows


# ------------------------------------------------------------------------------------------------
# Ray Data: rows -> an actor pool of GenerationActor
# ------------------------------------------------------------------------------------------------

def map_generation(rows: Sequence[dict[str, Any]], model_uri: str, *, batch_size: int, actors: int,
                   num_cpus_per_actor: float, num_gpus_per_actor: float, **actor_kwargs: Any):
    """A Ray Dataset of :class:`GenerationActor` outputs over ``rows`` (an actor pool of ``actors``)."""
    import ray
    from ray.data import ActorPoolStrategy

    init_ray()
    ds = ray.data.from_items(list(rows), override_num_blocks=max(1, math.ceil(len(rows) / max(1, batch_size))))
    return ds.map_batches(
        GenerationActor,
        fn_constructor_args=(model_uri,),
        fn_constructor_kwargs={"num_cpus": num_cpus_per_actor, **actor_kwargs},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=actors),
        num_gpus=num_gpus_per_actor,
        num_cpus=num_cpus_per_actor,
    )


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------

def _read_ids(fs, folder: str) -> set[str]:
    import pyarrow.parquet as pq

    if not fs.exists(folder):
        return set()
    ids: set[str] = set()
    for f in sorted(fs.glob(folder.rstrip("/") + "/*.parquet")):
        with fs.open(f, "rb") as fh:
            ids.update(pq.read_table(io.BytesIO(fh.read()), columns=["id"])["id"].to_pylist())
    return ids


def _write_part(fs, folder: str, name: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    import pyarrow.parquet as pq

    fs.makedirs(folder, exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    with fs.open(f"{folder.rstrip('/')}/{name}", "wb") as f:
        f.write(buf.getvalue())


def _result_rows(batch: dict[str, Any], by_row: dict[int, dict[str, Any]], ref: ModelRef, steps: Optional[int],
                 guidance: Optional[float], scheduler: Optional[str] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(manifest rows, quarantine rows)`` of one batch of :class:`GenerationActor` outputs."""
    ok, bad = [], []
    for i in range(len(batch["row"])):
        r = by_row[int(batch["row"][i])]
        if batch["error"][i]:
            bad.append({"id": r["id"], "row": r["row"], "source": r["source"], "pose": r["pose"],
                        "reason": str(batch["error"][i])})
        else:
            ok.append({"id": r["id"], "row": r["row"], "source": r["source"], "pose": r["pose"],
                       "seed": r["seed"], "model_name": ref.name, "model_version": ref.version,
                       "model_uri": ref.uri, "output": str(batch["output"][i]),
                       "steps": steps, "guidance": guidance, "width": int(batch["width"][i]),
                       "height": int(batch["height"][i]), "scheduler": scheduler})
    return ok, bad


def _generate_rows(todo: list[dict[str, Any]], ref: ModelRef, out: str, fs, base: str, *, actors: int,
                   batch_size: int, num_gpus_per_actor: float, num_cpus_per_actor: float, steps: Optional[int],
                   guidance: Optional[float], square: bool, pose_model_path: Optional[str],
                   tracking_uri: Optional[str], progress: bool, scheduler: Optional[str] = None) -> tuple[int, int]:
    """Generate ``todo`` and write one manifest / quarantine part per batch; ``(generated, quarantined)``."""
    from tqdm.auto import tqdm

    manifest_dir, quarantine_dir = f"{base.rstrip('/')}/manifest", f"{base.rstrip('/')}/quarantine"
    by_row = {r["row"]: r for r in todo}
    run = uuid.uuid4().hex[:8]
    generated = quarantined = 0
    sample = {k: v for k, v in {"num_steps": steps, "scheduler": scheduler}.items() if v is not None}
    for r in todo:
        r["cfg_scale"] = float("nan") if guidance is None else float(guidance)
    ds = map_generation(todo, ref.uri, batch_size=batch_size, actors=actors, num_cpus_per_actor=num_cpus_per_actor,
                        num_gpus_per_actor=num_gpus_per_actor, sample=sample, out_images=join(out, "images"),
                        square=square, pose_model_path=pose_model_path, tracking_uri=tracking_uri)
    bar = tqdm(total=len(todo), desc="generate-batch", unit="row", disable=not progress)
    for part, batch in enumerate(ds.iter_batches(batch_size=batch_size, batch_format="numpy")):
        ok, bad = _result_rows(batch, by_row, ref, steps, guidance, scheduler)
        name = f"part-{run}-{part:05d}.parquet"
        if ok:
            _write_part(fs, manifest_dir, name, ok, MANIFEST_SCHEMA)
        if bad:
            for b in bad:
                logger.warning("quarantined %s", b["reason"])
            _write_part(fs, quarantine_dir, name, bad, QUARANTINE_SCHEMA)
        generated += len(ok)
        quarantined += len(bad)
        bar.update(len(ok) + len(bad))
    bar.close()
    return generated, quarantined


def generate_batch(model: str, pairs: str, out: str, *, actors: int = 1, batch_size: int = 8,
                   num_gpus_per_actor: float = 0.0, num_cpus_per_actor: float = 1.0, steps: Optional[int] = None,
                   guidance: Optional[float] = None, seed: int = 0, square: bool = False,
                   pose_model_path: Optional[str] = None, tracking_uri: Optional[str] = None,
                   progress: bool = True, scheduler: Optional[str] = None) -> dict[str, Any]:
    """Generate every (source, pose) row of ``pairs`` into ``out`` (see the module docstring).

    Returns:
        The summary: ``rows`` of the table, ``skipped`` (already done), ``generated`` and ``quarantined``
        (this run), totals of the folder, the model name/version, seconds.
    """
    t0 = time.time()
    rows = read_pairs_table(pairs)
    ref = resolve_model(model, tracking_uri)
    fs, base = filesystem(out)
    manifest_dir, quarantine_dir = f"{base.rstrip('/')}/manifest", f"{base.rstrip('/')}/quarantine"
    done = _read_ids(fs, manifest_dir) | _read_ids(fs, quarantine_dir)
    todo = [dict(r, seed=int(r.get("seed", seed + SEED_STRIDE * r["row"]))) for r in rows if r["id"] not in done]
    logger.info("%d rows in %s: %d already done in %s, %d to generate with %s v%s on %d actor(s)",
                len(rows), pairs, len(rows) - len(todo), out, len(todo), ref.name, ref.version, actors)
    generated = quarantined = 0
    if todo:
        generated, quarantined = _generate_rows(
            todo, ref, out, fs, base, actors=actors, batch_size=batch_size, num_gpus_per_actor=num_gpus_per_actor,
            num_cpus_per_actor=num_cpus_per_actor, steps=steps, guidance=guidance, square=square,
            pose_model_path=pose_model_path, tracking_uri=tracking_uri, progress=progress, scheduler=scheduler)
    total_done, total_quarantined = len(_read_ids(fs, manifest_dir)), len(_read_ids(fs, quarantine_dir))
    summary = {"pairs": pairs, "out": out, "model": model, "model_name": ref.name, "model_version": ref.version,
               "scheduler": scheduler, "rows": len(rows), "skipped": len(rows) - len(todo), "generated": generated,
               "quarantined": quarantined, "total_generated": total_done, "total_quarantined": total_quarantined,
               "seconds": round(time.time() - t0, 2)}
    if generated + quarantined != len(todo):
        raise RuntimeError(f"generate-batch: {generated} generated + {quarantined} quarantined != {len(todo)} rows")
    with fs.open(f"{base.rstrip('/')}/summary.json", "w") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    return summary
