"""The pipeline folder: everything generation needs, in one self-contained, pickle-free folder.

::

    <folder>/
      config.json          full resolved config dict (model, encoders, data, diffusion, sample sections)
      model.safetensors    EMA weights of the denoiser
      autoencoder/         the latent codec (LatentCodec.save layout: vae/ + codec.json with latent_scale)
      encoders/            token-encoder weights: <role>.safetensors (stand-ins or the pretrained DINOv2)
      pose/                the pose estimator for target poses given as photos (MediaPipe PoseLandmarker .task)
      pipeline.json        format marker, latent scale, image size, encoder specs, lineage

It is what ``xmdpt generate --model DIR`` reads, what the `register` stage logs to MLflow as the
pyfunc artifact ``model_dir``, and what :func:`xmdpt.core.model_resolver.resolve_model_dir` returns after
a download. :func:`write_pipeline_folder` assembles it from the training model folder and the
feature manifest (which names the codec and the encoder weights the model was trained on).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

from fsspec.implementations.local import LocalFileSystem

from xmdpt.core.config import upgrade_legacy_config
from xmdpt.core.storage import filesystem

logger = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "xmdpt-pipeline"
PIPELINE_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CODEC_DIR = "autoencoder"
ENCODERS_DIR = "encoders"
POSE_DIR = "pose"
ROLES = ("image", "pose")


def is_pipeline_folder(path: str | Path) -> bool:
    p = Path(path)
    return all((p / f).is_file() for f in (PIPELINE_FILE, CONFIG_FILE, WEIGHTS_FILE))


MAKE_ONE = ("make one with `xmdpt import-official CHECKPOINT --preset xmdpt-s/2 --out DIR` (the authors' released "
            "checkpoints) or with the DVC pipeline's `register` stage (`dvc repro`), which writes artifacts/pipeline")


def not_a_pipeline_folder_reason(path: str | Path) -> str:
    """Why ``path`` is a *model* folder (weights + config only) and not a pipeline folder; "" otherwise."""
    p = Path(path)
    if p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file() and not (p / PIPELINE_FILE).is_file():
        return (f"{p} is a model folder ({CONFIG_FILE} + {WEIGHTS_FILE}: the denoiser alone), not a pipeline "
                f"folder: generation also needs {PIPELINE_FILE}, the autoencoder ({CODEC_DIR}/) and the token "
                f"encoders; {MAKE_ONE}")
    return ""


def check_pipeline_folder(path: str | Path) -> dict[str, Any]:
    """Raise ``FileNotFoundError``/``ValueError`` naming what is missing; return ``pipeline.json``."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: pipeline folder not found")
    reason = not_a_pipeline_folder_reason(p)
    if reason:
        raise FileNotFoundError(reason)
    missing = [f for f in (PIPELINE_FILE, CONFIG_FILE, WEIGHTS_FILE) if not (p / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{p}: not an xmdpt pipeline folder (missing {missing})")
    meta = json.loads((p / PIPELINE_FILE).read_text())
    if meta.get("format") != PIPELINE_FORMAT:
        raise ValueError(f"{p / PIPELINE_FILE}: format {meta.get('format')!r}, expected {PIPELINE_FORMAT!r}")
    if not (p / CODEC_DIR).is_dir():
        raise FileNotFoundError(f"{p}: missing the autoencoder folder {CODEC_DIR}/ (needed to decode)")
    for role, rel in (meta.get("encoder_weights") or {}).items():
        if not (p / rel).is_file():
            raise FileNotFoundError(f"{p}: {role} encoder weights {rel} missing")
    if meta.get("pose_model") and not (p / meta["pose_model"]).is_file():
        raise FileNotFoundError(f"{p}: pose estimator {meta['pose_model']} missing")
    return meta


def _copy_pose_model(pose_model: Optional[str], model_folder: Path, out: Path) -> Optional[str]:
    """Copy the pose estimator into ``out/pose/``; returns its path relative to ``out`` (None: none found).

    ``pose_model`` None: the model config's ``poses.model_path`` (the estimator the dataset's poses were
    made with), read where the folder is written (a DAG stage runs at the project root)."""
    if pose_model is not None and not Path(pose_model).is_file():
        raise FileNotFoundError(f"pose estimator {pose_model} not found (a MediaPipe PoseLandmarker .task)")
    if pose_model is None:
        config = upgrade_legacy_config(json.loads((model_folder / CONFIG_FILE).read_text()))
        pose_model = (config.get("poses") or {}).get("model_path")
    if not pose_model or not Path(pose_model).is_file():
        logger.warning("no pose estimator (%s) to put in the pipeline folder: target poses given as photos will "
                       "need --pose-model", pose_model or "poses.model_path unset")
        return None
    rel = f"{POSE_DIR}/{Path(pose_model).name}"
    (out / POSE_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copy2(pose_model, out / rel)
    return rel


def _copy_tree(src_uri: str, dst: Path) -> None:
    """Copy a local folder or fsspec URL folder to ``dst``."""
    fs, path = filesystem(src_uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{src_uri}: not found")
    if isinstance(fs, LocalFileSystem):
        shutil.copytree(path, dst, dirs_exist_ok=True)
    else:
        dst.mkdir(parents=True, exist_ok=True)
        fs.get(path.rstrip("/") + "/", str(dst) + "/", recursive=True)


def _copy_file(src_uri: str, dst: Path) -> None:
    fs, path = filesystem(src_uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{src_uri}: not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(path, str(dst))


def _check_inputs(model_folder: Path, encoder_weights: Mapping[str, str]) -> None:
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (model_folder / f).is_file():
            raise FileNotFoundError(f"{model_folder}: model folder lacks {f}")
    unknown = sorted(set(encoder_weights) - set(ROLES))
    if unknown:
        raise ValueError(f"encoder_weights: unknown roles {unknown}; expected {list(ROLES)}")


def _copy_codec(codec_uri: str, out: Path, latent_scale: float) -> None:
    """Copy the autoencoder folder into ``out`` and check its latent scale against the model's."""
    _copy_tree(codec_uri, out / CODEC_DIR)
    codec_info = json.loads((out / CODEC_DIR / "codec.json").read_text())
    if abs(float(codec_info["latent_scale"]) - float(latent_scale)) > 1e-6 * abs(float(latent_scale)):
        raise ValueError(f"{codec_uri}: codec latent_scale {codec_info['latent_scale']} differs from the model's "
                         f"{latent_scale}")


def _copy_encoder_weights(encoder_weights: Mapping[str, str], out: Path) -> dict[str, str]:
    """Copy the token-encoder weights into ``out``; returns role -> path relative to ``out``."""
    weights_rel = {}
    for role, uri in encoder_weights.items():
        if not uri or str(uri).startswith("hf-hub:"):
            continue  # pretrained hub encoder: rebuilt from the config's id when loading
        rel = f"{ENCODERS_DIR}/{role}.safetensors"
        _copy_file(uri, out / rel)
        weights_rel[role] = rel
    return weights_rel


def write_pipeline_folder(
    out: str | Path,
    *,
    model_folder: str | Path,
    codec_uri: str,
    encoder_weights: Mapping[str, str],
    encoders: Optional[Mapping[str, Any]] = None,
    standin: bool,
    latent_scale: float,
    lineage: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
    pose_model: Optional[str] = None,
) -> Path:
    """Assemble a pipeline folder.

    Args:
        out: the folder to write (replaced if present).
        model_folder: training's model folder (``config.json`` + ``model.safetensors``, EMA weights).
        codec_uri: the autoencoder folder (``LatentCodec.save`` layout: ``vae/`` + ``codec.json``).
        encoder_weights: role (``image``/``pose``) -> safetensors URI of the token encoders.
        encoders: encoder specs (names, token counts, stand-in flags) recorded for the reader.
        standin: True when the token encoders are random-feature stand-ins (offline default).
        latent_scale: the scale the model was trained with (checked against the codec's).
        lineage: where it came from (manifest URIs, run id, git commit).
        extra: more ``pipeline.json`` entries (an imported checkpoint's source, decoder, features dtype).
        pose_model: the MediaPipe ``.task`` to carry (default: the model config's ``poses.model_path``).
    """
    out = Path(out)
    model_folder = Path(model_folder)
    _check_inputs(model_folder, encoder_weights)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(model_folder / CONFIG_FILE, out / CONFIG_FILE)
    shutil.copy2(model_folder / WEIGHTS_FILE, out / WEIGHTS_FILE)
    _copy_codec(codec_uri, out, latent_scale)
    weights_rel = _copy_encoder_weights(encoder_weights, out)
    pose_rel = _copy_pose_model(pose_model, model_folder, out)
    meta = {
        "format": PIPELINE_FORMAT,
        "version": PIPELINE_VERSION,
        "latent_scale": float(latent_scale),
        "codec": CODEC_DIR,
        "encoder_weights": weights_rel,
        "encoders": dict(encoders or {}),
        "standin": bool(standin),
        "pose_model": pose_rel,
        "lineage": dict(lineage or {}),
        **dict(extra or {}),
    }
    (out / PIPELINE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    logger.info("wrote pipeline folder %s (standin encoders: %s)", out, standin)
    return out
