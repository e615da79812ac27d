"""The ``xmdpt`` command line.

Commands are thin: they parse arguments and call one library function. Each command imports its
library module when it runs (the one place project modules are imported inside functions): they
load torch, mlflow or ray at import, and ``xmdpt --help`` answers in 0.1 s instead of 4 s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="X-MDPT: pose-guided person image synthesis with masked diffusion transformers.",
)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset to (created)."),
    identities: int = typer.Option(40, "--identities", help="Number of synthetic people (train and test are disjoint)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of identities held out for test."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Write a synthetic dataset in exactly the DeepFashion In-shop layout.

    Person-like figures posed from an articulated 3-D skeleton, several views per identity, with
    both public annotation layouts (PATN/GFLA csv and PIDM/X-MDPT txt) and train/test lists.
    """
    _logging(verbose)
    from xmdpt.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(str(out), identities=identities, seed=seed, test_fraction=test_fraction)
    typer.echo(f"wrote {summary['images']} images of {summary['identities']} identities to {out}")


def _read_overrides(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"--overrides {path}: file not found")
    d = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(d) - {"model", "encoders", "autoencoder", "data"}) if isinstance(d, dict) else ["(not a mapping)"]
    if unknown:
        raise ValueError(f"--overrides {path}: unknown sections {unknown}; expected model, encoders, autoencoder, data")
    return d


@app.command("import-official")
def import_official(
    ckpt: Path = typer.Argument(..., help="The authors' released EMA checkpoint, e.g. ema_0.9999_300000.pt (a plain state dict)."),
    preset: str = typer.Option("xmdpt-s/2", "--preset", help="Architecture the checkpoint was trained with: xmdpt-s/2, xmdpt-b/2 or xmdpt-l/2."),
    out: Path = typer.Option(..., "--out", help="Pipeline folder to write (what generate, serve and the registry read)."),
    vae: Optional[str] = typer.Option(None, "--vae", help="The SD VAE the checkpoints were trained with: a local diffusers AutoencoderKL folder, or a hub id (default stabilityai/sd-vae-ft-mse)."),
    vae_decoder: Optional[Path] = typer.Option(None, "--vae-decoder", help="The authors' fine-tuned decoder (their diffuser_finetune_vae folder); replaces the VAE's decoder."),
    image_encoder: Optional[Path] = typer.Option(None, "--image-encoder", help="Local DINOv2 ViT-g/14 weights (timm model.safetensors or torch-hub dinov2_vitg14_pretrain.pth), copied into the folder. Default: timm's hub id, resolved when loading."),
    pose_encoder: Optional[Path] = typer.Option(None, "--pose-encoder", help="Local DINOv2 ViT-B/14 weights (timm model.safetensors or torch-hub dinov2_vitb14_pretrain.pth)."),
    register: Optional[str] = typer.Option(None, "--register", help="Also register the folder in MLflow as a new version of this model name."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Alias to set on the registered version (with --register)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking/registry URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    overrides: Optional[Path] = typer.Option(None, "--overrides", help="YAML/JSON with 'model', 'encoders', 'autoencoder', 'data' fields to replace (checkpoints trained with other sizes or encoders)."),
    pose_model: Optional[Path] = typer.Option(None, "--pose-model", help="MediaPipe PoseLandmarker .task copied into the folder for target poses given as photos (default: poses.model_path, the checkout's assets/models/pose_landmarker_full.task)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Turn the authors' released checkpoint into a complete pipeline folder, optionally registered.

    The checkpoint is read with ``torch.load(weights_only=True)`` (no pickle execution) and checked
    against the preset; the folder conditions the model exactly as the authors' inference does
    (hub DINOv2 position interpolation, sampled source latent, DDIM-50, CFG 2.0). Then
    ``xmdpt generate --model DIR`` (or ``--model models:/NAME@ALIAS`` after ``--register``).
    """
    _logging(verbose)
    if alias and not register:
        typer.echo("error: --alias needs --register NAME", err=True)
        raise typer.Exit(2)
    from xmdpt.core.config import ConfigError
    from xmdpt.release.official import import_official as _import

    try:
        extra = _read_overrides(overrides) if overrides else {}
        folder = _import(str(ckpt), preset, str(out), vae=vae, vae_decoder=vae_decoder,
                         image_encoder_weights=image_encoder, pose_encoder_weights=pose_encoder,
                         model_overrides=extra.get("model"), encoders=extra.get("encoders"),
                         autoencoder=extra.get("autoencoder"), data=extra.get("data"),
                         pose_model=str(pose_model) if pose_model else None)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote pipeline folder {folder}")
    if register:
        import json

        from xmdpt.registry.register import register_pipeline_folder

        meta = json.loads((folder / "pipeline.json").read_text())
        tags = {"source": "official", "preset": meta.get("preset", preset), "checkpoint": ckpt.name,
                "checkpoint_sha256": meta.get("lineage", {}).get("sha256", ""), "decoder": meta.get("decoder", "")}
        rec = register_pipeline_folder(folder, register, alias=alias, tags=tags, tracking_uri=tracking_uri)
        typer.echo(f"registered {rec['name']} version {rec['version']}"
                   + (f" as {rec['alias_uri']}" if rec["alias_uri"] else f" ({rec['model_uri']})")
                   + f" in {rec['tracking_uri']}")


@app.command()
def generate(
    model: str = typer.Option(..., "--model", help="Pipeline folder or MLflow URI (models:/xmdpt@champion, models:/xmdpt/3, runs:/...); resolved with $MLFLOW_TRACKING_URI."),
    source: Path = typer.Option(..., "--source", help="Photo of the person (any size; padded to 176:256 with its background colour, then squashed to the model's square)."),
    pose: str = typer.Option(..., "--pose", help="Target pose: a pose JSON ({\"format\": \"coco18\", \"image_size\": [H, W], \"keypoints\": 18 points (x, y), (-1, -1) missing}), a PIDM pose/*.txt, a PATN/GFLA annotation csv row (FILE.csv::IMAGE_NAME), or a photo to take the pose from."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model's sample.num_steps, 50)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="ddim | dpmsolver++ | unipc (default: the model's sample.scheduler, ddim; the solvers need fewer --steps)."),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg-scale", help="Guidance scale (default: the model's sample.cfg_scale, 2.0; 1 = conditional only)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    pose_model: Optional[Path] = typer.Option(None, "--pose-model", help="MediaPipe .task for pose photos (default: the model config's poses.model_path)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    square: bool = typer.Option(False, "--square", help="Write the model's square frame (256x256) instead of restoring the source's aspect (176x256 for DeepFashion)."),
    source_latent: Optional[str] = typer.Option(None, "--source-latent", help="mean | sample: the source's VAE posterior mean, or a seeded sample as the authors (default: the model's sample.source_latent)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | fp32 | bf16 for the denoiser and DINOv2 (default: the model's sample.precision; auto = bf16 on CUDA, fp32 on CPU)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Generate the person in SOURCE in the pose of POSE with a trained or imported model."""
    _logging(verbose)
    from xmdpt.core.config import ConfigError
    from xmdpt.data.images import ImageError
    from xmdpt.core.precision import PrecisionError
    from xmdpt.core.model_resolver import ModelNotFoundError
    from xmdpt.sampling.inputs import PoseError
    from xmdpt.sampling.pipeline import generate as _generate

    try:
        path = _generate(model, source, pose, out, num_steps=steps, cfg_scale=cfg_scale, seed=seed,
                         pose_model_path=str(pose_model) if pose_model else None, device=device, square=square,
                         source_latent=source_latent, precision=precision, scheduler=scheduler)
    except (ModelNotFoundError, ImageError, PoseError, FileNotFoundError, PrecisionError, ConfigError,
            RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


@app.command()
def serve(
    model: str = typer.Option(..., "--model", help="models:/NAME@ALIAS (or /VERSION) resolved with $MLFLOW_TRACKING_URI, or a pipeline folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the HTTP proxy binds to."),
    port: int = typer.Option(8000, "--port"),
    replicas: int = typer.Option(1, "--replicas", help="Serve replicas, each holding the pipeline."),
    max_batch: int = typer.Option(8, "--max-batch", help="Most requests sampled together (@serve.batch)."),
    batch_wait_ms: float = typer.Option(50.0, "--batch-wait-ms", help="How long a batch waits to fill."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    follow_alias: bool = typer.Option(False, "--follow-alias", help="Reload when the alias moves in the registry (no request dropped)."),
    poll_s: float = typer.Option(10.0, "--poll-s", help="With --follow-alias: seconds between registry polls."),
    max_mb: float = typer.Option(20.0, "--max-mb", help="Largest accepted upload (MB)."),
    max_side: int = typer.Option(4096, "--max-side", help="Largest accepted image side (px): decompression-bomb guard."),
    pose_model: Optional[Path] = typer.Option(None, "--pose-model", help="MediaPipe .task for pose photos (default: the model config's poses.model_path)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Default scheduler for requests without a 'scheduler' field: ddim | dpmsolver++ | unipc (default: the model's sample.scheduler)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Default steps for requests without a 'steps' field (default: the model's sample.num_steps)."),
    cpus_per_replica: float = typer.Option(1.0, "--cpus-per-replica"),
    gpus_per_replica: float = typer.Option(0.0, "--gpus-per-replica"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve a registered model over HTTP (Ray Serve): POST /v1/generate, GET /v1/model, GET /healthz."""
    _logging(verbose)
    from xmdpt.serving.server import ServeOptions, run_server

    _check_scheduler(scheduler)
    opts = ServeOptions(scheduler=scheduler, steps=steps, model=model, replicas=replicas, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                        device=device, follow_alias=follow_alias, poll_s=poll_s, max_bytes=int(max_mb * 1024 * 1024),
                        max_side=max_side, pose_model_path=str(pose_model.resolve()) if pose_model else None,
                        num_cpus_per_replica=cpus_per_replica, num_gpus_per_replica=gpus_per_replica)
    typer.echo(f"serving {model} at http://{host}:{port} (Ctrl-C stops)")
    run_server(opts, host=host, port=port, blocking=True)  # returns on Ctrl-C or SIGTERM, Serve and Ray shut down
    typer.echo("stopped")
    # Ray's exit hook would wait once more on processes that a Ctrl-C to the process group already stopped
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command("generate-batch")
def generate_batch(
    model: str = typer.Option(..., "--model", help="models:/NAME@ALIAS (pinned to its version at start), or a pipeline folder."),
    pairs: str = typer.Option(..., "--pairs", help="CSV or Parquet table (any fsspec URI) with columns source, pose [, id, seed]."),
    out: str = typer.Option(..., "--out", help="Output folder or URI: images/, manifest/, quarantine/, summary.json. A rerun resumes."),
    actors: int = typer.Option(1, "--actors", help="Actor pool size (each holds the pipeline)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Rows sampled together by one actor."),
    num_gpus_per_actor: float = typer.Option(0.0, "--num-gpus-per-actor"),
    num_cpus_per_actor: float = typer.Option(1.0, "--num-cpus-per-actor"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model's)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="ddim | dpmsolver++ | unipc (default: the model's sample.scheduler)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="CFG scale (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Row r uses seed + r unless the table has a seed column."),
    square: bool = typer.Option(False, "--square", help="Keep the model's square frame."),
    pose_model: Optional[Path] = typer.Option(None, "--pose-model", help="MediaPipe .task for pose photos."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Generate a table of (source, pose) rows on Ray Data: PNGs, a Parquet manifest and a quarantine."""
    _logging(verbose)
    from xmdpt.core.model_resolver import ModelNotFoundError
    from xmdpt.sampling.batch import BatchError
    from xmdpt.sampling.batch import generate_batch as _run

    _check_scheduler(scheduler)
    try:
        summary = _run(model, pairs, out, actors=actors, batch_size=batch_size, num_gpus_per_actor=num_gpus_per_actor,
                       num_cpus_per_actor=num_cpus_per_actor, steps=steps, guidance=guidance, seed=seed, square=square,
                       scheduler=scheduler,
                       pose_model_path=str(pose_model.resolve()) if pose_model else None)
    except (BatchError, ModelNotFoundError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{summary['rows']} rows: {summary['generated']} generated, {summary['quarantined']} quarantined, "
               f"{summary['skipped']} already done ({summary['model_name']} v{summary['model_version']}) -> {out}")


def _check_scheduler(scheduler: Optional[str]) -> None:
    """A bad --scheduler is a usage error (exit 2) before anything starts."""
    from xmdpt.core.config import SCHEDULERS

    if scheduler is not None and scheduler not in SCHEDULERS:
        typer.echo(f"error: --scheduler {scheduler!r}: expected one of {', '.join(SCHEDULERS)}", err=True)
        raise typer.Exit(2)


@app.command()
def check(
    params: Path = typer.Option(Path("params.yaml"), "--params", help="The configuration to check (params.yaml or a profile)."),
    stage: Optional[list[str]] = typer.Option(None, "--stage", help="Only these stages (repeatable); default: all."),
) -> None:
    """Check in seconds what every stage needs to finish (weights, metric, devices, storage, tracking); no compute."""
    from xmdpt.core.config import ConfigError, load_config
    from xmdpt.orchestration.preflight import STAGES, format_table, run_checks

    try:
        cfg = load_config(params)
        checks = run_checks(cfg, stage or STAGES)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_table(checks))
    failed = [c for c in checks if not c.ok]
    typer.echo(f"\n{len(checks) - len(failed)} ready, {len(failed)} not ready")
    if failed:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
