"""Great Expectations checks of the feature cache.

The suite (``data_specs/features_suite.json``) runs on a per-row *summary* of the cache, computed
by streaming over the shards (so a 100 GB cache is checked in bounded memory): for every row its
image path, flip and split, how many augmentations its image has, and for each tensor column
whether all values are finite and its byte length. Manifest-dependent values (row count, bytes per
tensor from the manifest shapes, the image size) are GE suite parameters.

GE 1.x flow: ephemeral context -> pandas datasource -> dataframe asset -> batch definition ->
suite -> ValidationDefinition -> Checkpoint. GE is imported lazily (it takes seconds).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from xmdpt.data import schema
from xmdpt.core.manifests import FeaturesManifest
from xmdpt.core.storage import filesystem

logger = logging.getLogger(__name__)

SUITE_PATH = Path(__file__).resolve().parents[2] / "data_specs" / "features_suite.json"
DTYPE_BYTES = {"float16": 2, "float32": 4}


class FeatureCacheError(RuntimeError):
    """The feature cache failed its checks; the message is the readable report."""


def _tensor_nbytes(manifest: FeaturesManifest) -> dict[str, int]:
    out = {}
    for name in schema.FEATURE_TENSORS:
        try:
            spec = manifest.tensors[name]
            out[name] = math.prod(spec.shape) * DTYPE_BYTES[spec.dtype]
        except KeyError as e:
            raise ValueError(f"feature manifest: tensors.{name}: unknown tensor or dtype {e}") from None
    return out


def summarize_cache(manifest: FeaturesManifest | dict[str, Any], batch_size: int = 256):
    """One summary row per cache row (pandas DataFrame), streaming over the shards."""
    import pandas as pd

    manifest = FeaturesManifest.coerce(manifest)
    uri = manifest.tables.features.uri
    fs, path = filesystem(uri)
    dtypes = {name: np.dtype(manifest.tensors[name].dtype).newbyteorder("<") for name in schema.FEATURE_TENSORS}
    cols: dict[str, list] = {k: [] for k in ("image_path", "flip", "split", "keypoints_finite", "keypoints_max",
                                              "latent_std_min")}
    for name in schema.FEATURE_TENSORS:
        cols[f"{name}_finite"], cols[f"{name}_nbytes"] = [], []
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    for batch in dataset.to_batches(batch_size=batch_size):
        d = batch.to_pydict()
        cols["image_path"] += d[schema.IMAGE_PATH]
        cols["flip"] += d[schema.FLIP]
        cols["split"] += d[schema.SPLIT]
        for kps in d[schema.KEYPOINTS]:
            k = np.asarray(kps, np.float32)
            cols["keypoints_finite"].append(bool(np.isfinite(k).all()))
            cols["keypoints_max"].append(float(k.max()) if len(k) else -1.0)
        for name in schema.FEATURE_TENSORS:
            for blob in d[name]:
                arr = np.frombuffer(blob, dtype=dtypes[name]) if len(blob) % dtypes[name].itemsize == 0 else None
                cols[f"{name}_nbytes"].append(len(blob))
                cols[f"{name}_finite"].append(bool(arr is not None and arr.size > 0 and np.isfinite(arr).all()))
                if name == schema.LATENT_STD:
                    cols["latent_std_min"].append(float(arr.min()) if arr is not None and arr.size else -1.0)
    df = pd.DataFrame(cols)
    df["augmentations_per_image"] = df.groupby("image_path")["flip"].transform("size").astype(int)
    return df


def _load_suite(gx, params: dict[str, Any]):
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    if not SUITE_PATH.is_file():
        raise FileNotFoundError(f"{SUITE_PATH}: feature-cache suite not found")
    spec = json.loads(SUITE_PATH.read_text())
    suite = gx.ExpectationSuite(name=spec["name"], notes=spec.get("notes"))
    for e in spec["expectations"]:
        suite.add_expectation(ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"]).to_domain_obj())
    missing = sorted({v["$PARAMETER"] for e in spec["expectations"] for v in e["kwargs"].values()
                      if isinstance(v, dict) and "$PARAMETER" in v} - set(params))
    if missing:
        raise ValueError(f"{SUITE_PATH}: suite parameters {missing} not provided")
    return suite


def validate_feature_cache(manifest: FeaturesManifest | dict[str, Any]) -> dict[str, Any]:
    """Run the feature-cache suite on the cache a `features` manifest describes.

    Args:
        manifest: the `features` stage manifest (``tables.features``, ``tensors``, ``image_size``);
            a dict is parsed as one.

    Returns:
        ``{"success": bool, "rows": int, "evaluated": int, "failures": [{"expectation", "column",
        "observed", "unexpected_count", "examples"}], "text": readable summary}``.
    """
    import great_expectations as gx

    manifest = FeaturesManifest.coerce(manifest)
    df = summarize_cache(manifest)
    nbytes = _tensor_nbytes(manifest)
    params = {"rows": manifest.tables.features.rows, "image_size": float(manifest.image_size),
              **{f"{k}_nbytes": v for k, v in nbytes.items()}}
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas("feature_cache").add_dataframe_asset("summary")
    batch_def = asset.add_batch_definition_whole_dataframe("all_rows")
    suite = context.suites.add(_load_suite(gx, params))
    vd = context.validation_definitions.add(gx.ValidationDefinition(name="feature_cache", data=batch_def, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(name="feature_cache", validation_definitions=[vd]))
    result = checkpoint.run(batch_parameters={"dataframe": df}, expectation_parameters=params)
    failures = []
    evaluated = 0
    for vr in result.run_results.values():
        for r in vr.results:
            evaluated += 1
            if r.success:
                continue
            cfg = r.expectation_config
            res = r.result or {}
            failures.append({
                "expectation": cfg.type,
                "column": cfg.kwargs.get("column") or cfg.kwargs.get("column_list"),
                "observed": res.get("observed_value"),
                "unexpected_count": res.get("unexpected_count"),
                "examples": [str(x) for x in (res.get("partial_unexpected_list") or [])[:5]],
                "exception": (r.exception_info or {}).get("exception_message") if r.exception_info else None,
            })
    success = bool(result.success) and not failures
    lines = [f"feature cache {manifest.tables.features.uri}: {len(df)} rows, "
             f"{evaluated} expectations, {len(failures)} failed"]
    for f in failures:
        lines.append(f"  FAILED {f['expectation']} on {f['column']}: observed={f['observed']} "
                     f"unexpected={f['unexpected_count']} examples={f['examples']}"
                     + (f" error={f['exception']}" if f.get("exception") else ""))
    report = {"success": success, "rows": len(df), "evaluated": evaluated, "failures": failures,
              "text": "\n".join(lines)}
    (logger.info if success else logger.error)("%s", report["text"])
    return report
