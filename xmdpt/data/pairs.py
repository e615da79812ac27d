"""The `pairs` stage: the (target, source) pair table of a DeepFashion root, with Ray Data.

1. Read the candidate pairs of the dataset's layout (:mod:`xmdpt.data.deepfashion_pairs`); malformed
   rows, unsafe names and duplicates become quarantine rows.
2. Ray Data, in parallel over the distinct images: read each file through fsspec and decode it
   fully (:func:`xmdpt.data.images.load_rgb`), recording its height and width or why it failed.
3. Pairs whose target or source is missing or undecodable are quarantined with that reason.
4. Write ``pairs`` (:data:`~xmdpt.data.schema.PAIRS_SCHEMA`), ``images`` (every image of a kept
   pair with its split and size — the `poses` stage uses the sizes) and ``quarantine`` under
   ``{storage_root}/pairs/{hash(params, dataset fingerprint)}/`` plus
   ``{artifacts_dir}/pairs/manifest.json``.

Counts add up: ``input_rows = valid + quarantined`` where an input row is one candidate pair
(or one unreadable line of a pair file).
"""

from __future__ import annotations

import logging

import pandas as pd
import pyarrow as pa

from xmdpt.core.config import XMDPTConfig
from xmdpt.data.deepfashion import dataset_fingerprint, detect_layout, read_bytes, resolve_root
from xmdpt.data.deepfashion_pairs import PairRecord, PairsReadout, read_pairs
from xmdpt.data.quarantine import fresh_prefix, quarantine_table, summarize_reasons, write_table
from xmdpt.data.schema import (
    HEIGHT,
    IMAGE_PATH,
    PAIR_ID,
    PAIRS_SCHEMA,
    PERSON_ID,
    SOURCE_PATH,
    SPLIT,
    TARGET_PATH,
    WIDTH,
)
from xmdpt.core.manifests import PairsCounts, PairsManifest, PairsTables, TableEntry
from xmdpt.core.storage import stage_prefix
from xmdpt.data.images import ImageError, load_rgb
from xmdpt.core.ray_utils import init_ray

logger = logging.getLogger(__name__)

STAGE_NAME = "pairs"
# Every image of a kept pair, with the size the `poses` stage needs to convert annotations.
IMAGES_SCHEMA = pa.schema([
    pa.field(IMAGE_PATH, pa.string(), nullable=False),
    pa.field(SPLIT, pa.string(), nullable=False),
    pa.field(HEIGHT, pa.int32(), nullable=False),
    pa.field(WIDTH, pa.int32(), nullable=False),
])
_ERROR = "error"  # probe-only column: why an image cannot be used ("" if it can)


def probe_images_batch(batch: pd.DataFrame, root: str) -> pd.DataFrame:
    """Ray Data UDF: read and fully decode each ``IMAGE_PATH`` under ``root``; add size or error."""

    heights, widths, errors = [], [], []
    for rel in batch[IMAGE_PATH]:
        h = w = 0
        try:
            rgb = load_rgb(read_bytes(root, rel), name=rel)  # (H, W, 3) uint8
            h, w = rgb.shape[:2]
            err = ""
        except FileNotFoundError:
            err = f"{rel}: file not found under the dataset root"
        except (ImageError, ValueError, OSError) as e:
            err = str(e) if rel in str(e) else f"{rel}: {e}"
        heights.append(h)
        widths.append(w)
        errors.append(err)
    return batch.assign(**{HEIGHT: heights, WIDTH: widths, _ERROR: errors})


def probe_images(root: str, paths: list[str], num_cpus: float) -> pd.DataFrame:
    """Decode every image in parallel with Ray Data; ``IMAGE_PATH, HEIGHT, WIDTH, error`` per path."""
    if not paths:
        return pd.DataFrame({IMAGE_PATH: [], HEIGHT: [], WIDTH: [], _ERROR: []})
    import ray

    init_ray()
    ds = ray.data.from_items([{IMAGE_PATH: p} for p in paths],
                             override_num_blocks=max(1, min(len(paths) // 16, 64)))
    ds = ds.map_batches(probe_images_batch, fn_kwargs={"root": root}, batch_format="pandas",
                        batch_size=16, num_cpus=num_cpus)
    return ds.to_pandas()


def _screen_pairs(readout: PairsReadout, error_of: dict[str, str]) -> tuple[list[PairRecord], list[tuple[str, str]]]:
    """Keep the pairs whose target and source both decode; return them and the ``(row key, reason)``
    of every rejected row (the reader's own rejects first)."""
    kept, problems = [], [(p.row_key, p.reason) for p in readout.problems]
    for pair in readout.pairs:
        bad = [f"{role} {error_of[p]}" for role, p in (("target", pair.target_path), ("source", pair.source_path))
               if error_of[p]]
        if bad:
            problems.append((pair.row_key, f"{pair.row_key}: " + "; ".join(bad)))
        else:
            kept.append(pair)
    return kept, problems


def _pairs_table(kept: list[PairRecord]) -> pa.Table:
    """The ``pairs`` table (:data:`~xmdpt.data.schema.PAIRS_SCHEMA`) of the kept pairs."""
    return pa.Table.from_pydict({
        PAIR_ID: [p.pair_id for p in kept],
        SPLIT: [p.split for p in kept],
        PERSON_ID: [p.person_id for p in kept],
        TARGET_PATH: [p.target_path for p in kept],
        SOURCE_PATH: [p.source_path for p in kept],
    }, schema=PAIRS_SCHEMA)


def _images_table(kept: list[PairRecord], size_of: dict[str, tuple[int, int]]) -> pa.Table:
    """The ``images`` table (:data:`IMAGES_SCHEMA`): every image of a kept pair, per split, with its size."""
    image_keys = sorted({(path, p.split) for p in kept for path in (p.target_path, p.source_path)})
    return pa.Table.from_pydict({
        IMAGE_PATH: [k[0] for k in image_keys],
        SPLIT: [k[1] for k in image_keys],
        HEIGHT: [size_of[k[0]][0] for k in image_keys],
        WIDTH: [size_of[k[0]][1] for k in image_keys],
    }, schema=IMAGES_SCHEMA)


def build_pairs(cfg: XMDPTConfig) -> dict:
    """Run the `pairs` stage; return the manifest (also written to ``{artifacts_dir}/pairs/manifest.json``)."""

    init_ray(cfg=cfg)  # joins $RAY_ADDRESS; a local storage_root on a cluster of several nodes stops here
    root = resolve_root(cfg.paths.dataset_root)
    layout = detect_layout(root, cfg.data.layout)
    readout = read_pairs(root, layout, cfg.data.split_test_fraction)
    fingerprint = dataset_fingerprint(root)
    params = {"layout": layout, "split_test_fraction": cfg.data.split_test_fraction}
    prefix = fresh_prefix(stage_prefix(cfg.paths.storage_root, STAGE_NAME, params, fingerprint))
    logger.info("%s: %d candidate pairs, %d rejected rows; checking images", root, len(readout.pairs),
                len(readout.problems))

    paths = sorted({p for pair in readout.pairs for p in (pair.target_path, pair.source_path)})
    probe = probe_images(root, paths, cfg.data.num_cpus_per_task)
    error_of = dict(zip(probe[IMAGE_PATH], probe[_ERROR]))
    size_of = {p: (int(h), int(w)) for p, h, w in zip(probe[IMAGE_PATH], probe[HEIGHT], probe[WIDTH])}

    kept, problems = _screen_pairs(readout, error_of)
    pairs = _pairs_table(kept)
    images = _images_table(kept, size_of)
    quarantine = quarantine_table(STAGE_NAME, problems)
    if readout.input_rows != pairs.num_rows + quarantine.num_rows:  # internal invariant
        raise AssertionError(f"pairs: {readout.input_rows} input rows != {pairs.num_rows} kept "
                             f"+ {quarantine.num_rows} quarantined")
    for key, reason in problems[:20]:
        logger.warning("quarantined %s", reason)

    manifest = PairsManifest(
        uri=prefix,
        params=params,
        layout=layout,
        dataset_root=cfg.paths.dataset_root,
        inputs={"dataset": fingerprint},
        tables=PairsTables(
            pairs=TableEntry(**write_table(prefix, "pairs", pairs)),
            images=TableEntry(**write_table(prefix, "images", images)),
            quarantine=TableEntry(**write_table(prefix, "quarantine", quarantine)),
        ),
        counts=PairsCounts(
            input_rows=readout.input_rows,
            valid=pairs.num_rows,
            quarantined=quarantine.num_rows,
            images=images.num_rows,
            images_unusable=int((probe[_ERROR] != "").sum()),
            by_split={s: int(n) for s, n in pairs.to_pandas()[SPLIT].value_counts().items()},
        ),
        quarantine_reasons=summarize_reasons(quarantine),
    )
    logger.info("pairs: %d kept, %d quarantined (%s)", pairs.num_rows, quarantine.num_rows, manifest.counts)
    return manifest.write(PairsManifest.path(cfg.paths.artifacts_dir))
