"""The `evaluate` stage: generate every test pair with the EMA weights, measure, and report.

The stage assembles the pipeline folder from the upstream manifests, generates the test pairs
through Ray Data batch inference (:mod:`xmdpt.evaluation.pairs`: an actor pool, each actor holding an
:class:`~xmdpt.sampling.pipeline.XMDPTPipeline`, with the ``sample`` config and a guided vs unguided
subset) and computes the metrics (:mod:`xmdpt.evaluation.scores`: the PIDM protocol's SSIM / PSNR,
LPIPS and FID with the published weights only, the ``synthetic_*`` benchmark metrics, guided vs
unguided, and the pair-by-pair comparisons).

Outputs: generated PNGs under ``{storage_root}/evaluate/{hash}/images/``, ``grid.png``
(source | target skeleton | generated | ground truth; one row per person, people evenly spaced over
the test identities — a fixed rule, not a pick of the best rows), ``grid_worst.png`` (the rows with
the largest colour error) and ``metrics.json`` (a DVC metric) under ``{artifacts_dir}/evaluate/``.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from xmdpt.core.config import XMDPTConfig
from xmdpt.data.keypoints import render_skeleton
from xmdpt.metrics.protocol import get_protocol
from xmdpt.evaluation.scores import compute_metrics, worst_rows
from xmdpt.evaluation.pairs import GUIDED, ValidateLike, generate_pairs, load_generated, load_test_pairs, save_generated
from xmdpt.core.manifests import EvaluateLineage, EvaluateManifest, FeaturesManifest, TrainManifest, ValidateManifest
from xmdpt.core.storage import filesystem, is_url, join, portable_json, stage_prefix
from xmdpt.core.pipeline_folder import write_pipeline_folder

logger = logging.getLogger(__name__)

STAGE = "evaluate"


# ------------------------------------------------------------------------------------------------
# Grid and the outputs
# ------------------------------------------------------------------------------------------------


def one_per_person(pairs: Sequence[dict[str, Any]], rows: Sequence[int], n: int) -> list[int]:
    """The grid's fixed rule: ``n`` people evenly spaced over the evaluated test identities (in pair-id
    order), each shown by its first evaluated pair; not chosen by any score."""
    first: dict[str, int] = {}
    for r in sorted(rows):
        first.setdefault(pairs[r]["person_id"], r)
    people = list(first.values())  # in pair-id order
    if n >= len(people):
        return people
    return [people[(i * len(people)) // n] for i in range(n)]


def sample_grid(pairs: Sequence[dict[str, Any]], images: dict[str, dict[int, np.ndarray]], rows: int | Sequence[int],
                eval_hw: tuple[int, int]) -> np.ndarray:
    """Rows of (source | target skeleton | generated | ground truth), uint8 ``(rows*H, 4*W, 3)``.

    ``rows``: the row indices to show, or a count: that many people by :func:`one_per_person`.
    """

    if isinstance(rows, int):
        rows = one_per_person(pairs, sorted(images["gen"]), rows)
    out = []
    for r in rows:
        p = pairs[r]
        skel = render_skeleton(p["keypoints"], (p["height"], p["width"]), eval_hw)
        out.append(np.concatenate([images["src"][r], skel, images["gen"][r], images["gt"][r]], axis=1))
    return np.concatenate(out, axis=0)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _generated_images(cfg: XMDPTConfig, model_dir: str, pairs: Sequence[dict[str, Any]],
                      generation_uri: Optional[str]
                      ) -> tuple[dict[str, dict[int, np.ndarray]], dict[int, str], bool]:
    """``(generated, quarantined, reused)``: the images kept at ``generation_uri`` by an earlier run for
    these pairs, else a new generation (kept there before any metric is computed)."""
    reused = load_generated(generation_uri, pairs) if generation_uri else None
    if reused is not None:
        generated, quarantined = reused
        logger.info("reusing the %d generated images kept at %s (an earlier run stopped after generation)",
                    sum(len(v) for v in generated.values()), generation_uri)
        return generated, quarantined, True
    generated, quarantined = generate_pairs(cfg, model_dir, pairs)
    if generation_uri:  # kept before the metrics: a failure there does not cost the generation again
        save_generated(generation_uri, pairs, generated, quarantined)
    return generated, quarantined, False


def _write_images(images_uri: str, pairs: Sequence[dict[str, Any]], generated: dict[str, dict[int, np.ndarray]],
                  quarantined: dict[int, str]) -> None:
    """The generated PNGs of the evaluated pairs: ``<pair>_vis.png``, ``<pair>_<variant>_vis.png`` unguided."""
    fs, base = filesystem(images_uri)
    fs.makedirs(base, exist_ok=True)
    for variant, imgs in generated.items():
        for r, img in imgs.items():
            if r in quarantined:
                continue
            name = pairs[r]["pair_id"].split(":", 1)[-1].replace("/", "_")
            suffix = "" if variant == GUIDED else f"_{variant}"
            with fs.open(f"{base.rstrip('/')}/{name}{suffix}_vis.png", "wb") as f:
                f.write(_png(img))


def evaluate(cfg: XMDPTConfig, model_dir: str, validate_manifest: ValidateLike, *, out_dir: str | Path,
             images_uri: Optional[str] = None, generation_uri: Optional[str] = None) -> dict[str, Any]:
    """Generate the test pairs with the pipeline folder ``model_dir`` and write grid + metrics.

    Args:
        model_dir: a pipeline folder (or model URI) readable by the actors.
        validate_manifest: the `validate` manifest (pairs + poses tables).
        out_dir: ``{artifacts_dir}/evaluate`` — ``grid.png`` and ``metrics.json`` go here.
        images_uri: folder/URL for the generated PNGs (content-addressed prefix); None: not written.
        generation_uri: where the generated images and their manifest are kept as soon as generation
            ends (keyed by what generation depends on, not by the metric settings); a rerun finds them
            there and skips the generation. None: not kept.

    Returns:
        The metrics dict (also written to ``metrics.json``).
    """

    pairs = load_test_pairs(validate_manifest, cfg.evaluate.max_pairs,
                            rule=get_protocol(cfg.evaluate.protocol).test_pairs, seed=cfg.sample.seed)
    generated, quarantined, reused = _generated_images(cfg, model_dir, pairs, generation_uri)
    metrics, images = compute_metrics(cfg, validate_manifest, pairs, generated, quarantined)
    metrics["generation_reused"] = reused
    if metrics["num_pairs"] + len(quarantined) != len(pairs):
        raise RuntimeError(f"{metrics['num_pairs']} evaluated + {len(quarantined)} quarantined != {len(pairs)} pairs")
    metrics["quarantine"] = [quarantined[r] for r in sorted(quarantined)][:50]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_hw = tuple(cfg.evaluate.eval_size)
    grid = sample_grid(pairs, images, cfg.evaluate.grid_rows, eval_hw)
    (out_dir / "grid.png").write_bytes(_png(grid))
    worst = sample_grid(pairs, images, worst_rows(pairs, images, cfg.evaluate.grid_rows, eval_hw), eval_hw)
    (out_dir / "grid_worst.png").write_bytes(_png(worst))
    if images_uri:
        _write_images(images_uri, pairs, generated, quarantined)
        metrics["images_uri"] = images_uri
    # paths under the project folder as ./relative: a DVC output names no folder of this machine
    (out_dir / "metrics.json").write_text(portable_json(metrics))
    logger.info("evaluation: %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
                                   if not isinstance(v, (dict, list, str))})
    return metrics


# ------------------------------------------------------------------------------------------------
# The DVC stage
# ------------------------------------------------------------------------------------------------


def pipeline_inputs(train_manifest: TrainManifest, features_manifest: FeaturesManifest) -> dict[str, Any]:
    """What :func:`xmdpt.core.pipeline_folder.write_pipeline_folder` needs, read from the upstream manifests."""
    codec_uri = features_manifest.vae_uri
    if codec_uri.rstrip("/").endswith("/vae"):  # the diffusers folder inside the codec folder
        codec_uri = codec_uri.rstrip("/")[: -len("/vae")]
    return {
        "model_folder": train_manifest.model_uri,
        "codec_uri": codec_uri,
        "encoder_weights": dict(features_manifest.encoder_weights),
        "encoders": {k: dict(v) for k, v in features_manifest.encoders.items()},
        "standin": features_manifest.standin,
        "latent_scale": float(features_manifest.latent_scale),
    }


def _build_pipeline_folder(inputs: dict[str, Any], prefix: str, lineage: EvaluateLineage) -> tuple[Path, str]:
    """Write the pipeline folder locally (the model folder fetched first when it is remote) and, for a
    remote ``prefix``, upload it; returns ``(local folder, pipeline URI)``."""
    if is_url(prefix):
        local = Path.home() / ".cache" / "xmdpt" / "pipelines" / Path(prefix.rstrip("/")).name
    else:
        local = Path(prefix) / "pipeline"
    if is_url(inputs["model_folder"]):
        fs, path = filesystem(inputs["model_folder"])
        tmp_model = local.with_name(local.name + ".model")
        shutil.rmtree(tmp_model, ignore_errors=True)
        fs.get(path.rstrip("/") + "/", str(tmp_model) + "/", recursive=True)
        inputs["model_folder"] = str(tmp_model)
    write_pipeline_folder(local, lineage=lineage.to_dict(), **inputs)
    pipeline_uri = str(local)
    if is_url(prefix):
        fs, path = filesystem(join(prefix, "pipeline"))
        fs.put(str(local) + "/", path.rstrip("/") + "/", recursive=True)
        pipeline_uri = join(prefix, "pipeline")
    return local, pipeline_uri


def _generation_uri(cfg: XMDPTConfig, keys: Sequence[str]) -> str:
    """Where the generated images are kept: keyed by the sampler, the pairs and the upstream outputs,
    not by the metric settings."""
    return join(stage_prefix(cfg.paths.storage_root, "evaluate-generation", cfg.sample,
                             {"max_pairs": cfg.evaluate.max_pairs,
                              "unguided_pairs": cfg.evaluate.unguided_pairs,
                              "test_pairs": get_protocol(cfg.evaluate.protocol).test_pairs},
                             cfg.paths.dataset_root, *keys),
                "generated")


def evaluate_stage(cfg: XMDPTConfig) -> dict[str, Any]:
    """Run the `evaluate` stage: pipeline folder, generation, metrics, grid; returns the stage manifest.

    Reads ``{artifacts_dir}/{validate,features,train}/manifest.json``; writes ``grid.png``,
    ``metrics.json`` and ``manifest.json`` (pipeline folder URI, lineage) under ``{artifacts_dir}/evaluate``.
    """
    art = Path(cfg.paths.artifacts_dir)
    validate, features, train = (ValidateManifest.load(art), FeaturesManifest.load(art), TrainManifest.load(art))
    keys = [m.key() for m in (validate, features, train)]
    inputs = pipeline_inputs(train, features)
    prefix = stage_prefix(cfg.paths.storage_root, STAGE, cfg.sample, cfg.evaluate, cfg.paths.dataset_root, *keys)
    lineage = EvaluateLineage(
        train_run_id=train.run_id,
        train_manifest=str(TrainManifest.path(art)),
        features_manifest=str(FeaturesManifest.path(art)),
        model_folder=inputs["model_folder"],
        evaluate_prefix=prefix,
    )
    local, pipeline_uri = _build_pipeline_folder(inputs, prefix, lineage)
    metrics = evaluate(cfg, str(local), validate, out_dir=art / STAGE, images_uri=join(prefix, "images"),
                       generation_uri=_generation_uri(cfg, keys))
    return EvaluateManifest(
        uri=prefix,
        pipeline_uri=pipeline_uri,
        pipeline_local=str(local),
        standin_encoders=inputs["standin"],
        metrics_path=str(art / STAGE / "metrics.json"),
        grid_path=str(art / STAGE / "grid.png"),
        num_pairs=metrics["num_pairs"],
        lineage=lineage,
        tracking_uri=train.tracking_uri,
    ).write(EvaluateManifest.path(art))
