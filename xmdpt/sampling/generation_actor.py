"""The Ray Data generation actor: one :class:`XMDPTPipeline` per actor, batches of rows in, images out.

:func:`xmdpt.sampling.batch.map_generation` runs an actor pool of :class:`GenerationActor` over a
table of rows for ``xmdpt generate-batch`` and for the `evaluate` stage. Each row carries its own
seed, so an image does not depend on the batch it lands in or on the actor that makes it. A row
whose source photo or pose cannot be read comes back with an ``error`` naming its file instead of
failing the batch.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xmdpt.data.images import ImageError, load_rgb, resize_square
from xmdpt.core.storage import filesystem, is_url, join
from xmdpt.sampling.inputs import PoseError, is_pose_annotation, is_pose_json, parse_pose, prepare_source, restore_aspect
from xmdpt.sampling.pipeline import XMDPTPipeline

__all__ = ["GenerationActor", "is_inline_pose"]

# the ``sample`` config keys an actor passes on to XMDPTPipeline.generate_arrays
SAMPLE_KEYS = ("num_steps", "cfg_power", "guidance_interval", "source_latent", "precision", "scheduler")


def is_inline_pose(s: str) -> bool:
    return s.lstrip().startswith("{")


class GenerationActor:
    """Ray Data actor holding an :class:`XMDPTPipeline`.

    Input batch columns: ``row``, ``id``, ``source`` (URI), ``pose`` (URI or inline JSON), ``seed``,
    ``cfg_scale`` (NaN: the sampling default). Output: the input's ``row``/``id`` plus ``error``
    ("" or why the row failed, naming its file), ``output`` (the PNG URI when ``out_images`` is set),
    ``width``/``height``, and ``image`` (uint8 ``(N, S, S, 3)`` square generations) when ``return_images``.
    """

    def __init__(self, model_uri: str, *, sample: Optional[dict[str, Any]] = None, out_images: Optional[str] = None,
                 square: bool = False, return_images: bool = False, num_cpus: float = 1.0,
                 pose_model_path: Optional[str] = None, device: Optional[str] = None,
                 tracking_uri: Optional[str] = None, pad: bool = True) -> None:
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, int(round(num_cpus))))
        self.pipe = XMDPTPipeline.from_pretrained(model_uri, device=device, tracking_uri=tracking_uri)
        if pose_model_path:
            self.pipe.pose_model_path = pose_model_path
        self.sample = dict(sample or {})
        self.out_images = out_images
        if out_images:
            fs, path = filesystem(out_images)
            fs.makedirs(path, exist_ok=True)
        self.square = square
        self.return_images = return_images
        # True: any photo, padded to 176:256 with its background first; False: dataset images squashed as
        # the features stage squashes them for training (the evaluate stage)
        self.pad = pad

    def _read_bytes(self, uri: str) -> bytes:
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            return f.read()

    def _load_pose(self, spec: str, name: str):
        if not spec:
            raise PoseError(f"{name}: empty pose")
        if is_inline_pose(spec):
            try:
                obj = json.loads(spec)
            except json.JSONDecodeError as e:
                raise PoseError(f"{name}: inline pose is not valid JSON ({e})") from None
            return parse_pose(obj, name=name)
        local_like = is_pose_json(spec.split("::")[0]) or is_pose_annotation(spec)
        if local_like and is_url(spec):  # a pose file on object storage: read it through a local copy
            target, _, selector = spec.partition("::")
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / Path(target).name
                local.write_bytes(self._read_bytes(target))
                return self.pipe.load_pose(f"{local}::{selector}" if selector else local, name=spec)
        if local_like:
            return self.pipe.load_pose(spec, name=spec)
        try:
            data = self._read_bytes(spec)
        except (OSError, FileNotFoundError) as e:
            raise ImageError(f"{spec}: cannot read pose image ({e})") from None
        return self.pipe.load_pose(data, name=spec)

    def _read_inputs(self, batch: dict[str, np.ndarray], errors: list[str]
                     ) -> tuple[dict[int, np.ndarray], dict[int, Any], dict[int, tuple[int, int]]]:
        """``(sources, poses, raw_hw)`` by batch index for the rows that could be read; ``errors[i]``
        says why row ``i`` could not."""
        S = self.pipe.image_size
        raw_hw: dict[int, tuple[int, int]] = {}
        sources: dict[int, np.ndarray] = {}
        poses: dict[int, Any] = {}
        for i in range(len(batch["row"])):
            rid, src = str(batch["id"][i]), str(batch["source"][i])
            field = "source"
            try:
                if not src:
                    raise ImageError("empty path")
                try:
                    data = self._read_bytes(src)
                except OSError as e:
                    raise ImageError(f"{src}: cannot read ({type(e).__name__}: {e})") from None
                raw = load_rgb(data, name=src)
                raw_hw[i] = raw.shape[:2]
                sources[i] = prepare_source(raw, S) if self.pad else resize_square(raw, S)
                field = "pose"
                poses[i] = self._load_pose(str(batch["pose"][i]), f"{rid} pose")
            except (ImageError, PoseError, OSError, ValueError) as e:
                errors[i] = f"{rid}: {field} {e}"
                sources.pop(i, None)
        return sources, poses, raw_hw

    def _generate(self, batch: dict[str, np.ndarray], sources: dict[int, np.ndarray], poses: dict[int, Any],
                  images: np.ndarray) -> None:
        """Generate the rows in ``sources`` into ``images``, one call per guidance scale."""
        groups: dict[float, list[int]] = {}
        for i in sources:
            scale = float(batch["cfg_scale"][i]) if "cfg_scale" in batch else float("nan")
            groups.setdefault(scale, []).append(i)
        for scale, idx in groups.items():
            kw = {k: v for k, v in self.sample.items() if k in SAMPLE_KEYS}
            kw["cfg_scale"] = None if math.isnan(scale) else scale
            if "guidance_interval" in kw and isinstance(kw["guidance_interval"], list):
                kw["guidance_interval"] = tuple(kw["guidance_interval"])
            images[idx] = self.pipe.generate_arrays(np.stack([sources[i] for i in idx]), [poses[i] for i in idx],
                                                    seeds=[int(batch["seed"][i]) for i in idx], pad=self.pad, **kw)

    def _write_png(self, row_id: str, img: np.ndarray) -> str:
        """Write ``images/<id>.png`` under ``out_images``; returns its URI."""
        from PIL import Image

        uri = join(self.out_images, f"{row_id}.png")
        fs, path = filesystem(uri)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        with fs.open(path, "wb") as f:
            f.write(buf.getvalue())
        return uri

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["row"])
        S = self.pipe.image_size
        images = np.zeros((n, S, S, 3), np.uint8)
        errors, outputs = [""] * n, [""] * n
        widths, heights = np.zeros(n, np.int32), np.zeros(n, np.int32)
        sources, poses, raw_hw = self._read_inputs(batch, errors)
        self._generate(batch, sources, poses, images)
        for i in sources:
            img = images[i] if self.square else restore_aspect(images[i], raw_hw[i], padded=self.pad)
            heights[i], widths[i] = img.shape[:2]
            if self.out_images:
                outputs[i] = self._write_png(batch["id"][i], img)
        out = {"row": batch["row"], "id": batch["id"], "error": np.array(errors, dtype=object),
               "output": np.array(outputs, dtype=object), "width": widths, "height": heights}
        if self.return_images:
            out["image"] = images
        return out
