"""The ``xmdpt`` command line.

Commands are thin: they parse arguments and call one library function (imported lazily so that
``xmdpt --help`` is instant).
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
    from xmdpt.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(str(out), identities=identities, seed=seed, test_fraction=test_fraction)
    typer.echo(f"wrote {summary['images']} images of {summary['identities']} identities to {out}")


@app.command("import-official")
def import_official(
    ckpt: Path = typer.Argument(..., exists=True, dir_okay=False, help="The authors' released EMA checkpoint (.pt state dict)."),
    preset: str = typer.Option("xmdpt-s/2", "--preset", help="Architecture the checkpoint was trained with (xmdpt-s/2, xmdpt-b/2, xmdpt-l/2)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (config.json + model.safetensors)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Convert the authors' released checkpoints into our model folder format.

    The checkpoint is read with ``torch.load(weights_only=True)`` (no pickle execution); keys and
    shapes are checked against the preset and any mismatch is reported by name.
    """
    _logging(verbose)
    from xmdpt.model.official import import_official as _import

    _import(str(ckpt), preset, str(out))
    typer.echo(f"wrote {out}")


@app.command()
def generate(
    model: str = typer.Option(..., "--model", help="Pipeline folder or MLflow URI (models:/xmdpt@champion, models:/xmdpt/3, runs:/...); resolved with $MLFLOW_TRACKING_URI."),
    source: Path = typer.Option(..., "--source", help="Photo of the person (any size; padded to 176:256 with its background colour, then squashed to the model's square)."),
    pose: Path = typer.Option(..., "--pose", help="Target pose: a pose JSON ({\"format\": \"coco18\", \"image_size\": [H, W], \"keypoints\": 18 points (x, y), (-1, -1) missing}) or a photo to take the pose from."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: the model's sample.num_steps, 50)."),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg-scale", help="Guidance scale (default: the model's sample.cfg_scale, 2.0; 1 = conditional only)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    pose_model: Optional[Path] = typer.Option(None, "--pose-model", help="MediaPipe .task for pose photos (default: the model config's data.pose_model_path)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Generate the person in SOURCE in the pose of POSE with a trained model."""
    _logging(verbose)
    from xmdpt.data.images import ImageError
    from xmdpt.registry import ModelNotFoundError
    from xmdpt.sampling.inputs import PoseError
    from xmdpt.sampling.pipeline import generate as _generate

    try:
        path = _generate(model, source, pose, out, num_steps=steps, cfg_scale=cfg_scale, seed=seed,
                         pose_model_path=str(pose_model) if pose_model else None, device=device)
    except (ModelNotFoundError, ImageError, PoseError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
