"""``xmdpt serve``: the registered model behind HTTP, on Ray Serve with a FastAPI ingress.

Endpoints:

- ``POST /v1/generate`` — multipart form: ``source`` (the person photo), ``pose`` (a photo to take
  the pose from, or pose JSON ``{"format": "coco18", "image_size": [H, W], "keypoints": [...18]}``
  as a file part or a text field), optional ``steps``, ``guidance``, ``scheduler`` (``ddim``,
  ``dpmsolver++`` or ``unipc``; default the server's ``--scheduler``, else the model's), ``seed`` (default 0),
  ``square`` (keep the model's square frame), ``format`` (``png``, or ``json`` for base64). Returns
  ``image/png`` (headers ``X-Model-Version``, ``X-Batch-Size``) or JSON.
- ``GET /v1/model`` — name, version, alias, run id, data hash, preset, image size, the default
  scheduler and steps, replica pid.
- ``GET /v1/stats`` — batch sizes this replica has sampled (the last 1000) and requests served.
- ``GET /healthz``.

Concurrent requests are batched (``@serve.batch`` on a method separate from the route): a batch
is split by sampling settings (scheduler, steps, guidance), and each group is sampled in one
``XMDPTPipeline.generate_arrays`` call with **one seed per image**, so a seed gives the same image
alone or batched (bit for bit on CPU: :mod:`xmdpt.core.batch_invariance`). Bad requests get a 4xx JSON
``{"error": {"field", "reason"}}`` before any sampling. With ``--follow-alias`` every replica polls the registry and, when the alias moves,
loads the new version beside the old one and switches between batches: requests in flight finish
on the version they started with, none fails.
"""


import asyncio
import base64
import io
import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request  # a real annotation object: the class is shipped to replicas by value
from xmdpt.core.config import SCHEDULERS
from xmdpt.data.images import ImageError, load_rgb
from xmdpt.core.ray_utils import init_ray
from xmdpt.sampling.batch import resolve_model
from xmdpt.sampling.inputs import PoseError, parse_pose, prepare_source, restore_aspect
from xmdpt.sampling.pipeline import XMDPTPipeline

logger = logging.getLogger(__name__)

__all__ = ["ServeOptions", "RequestError", "build_app", "run_server", "decode_upload", "parse_pose_field"]


@dataclass(frozen=True)
class ServeOptions:
    """Settings of ``xmdpt serve`` (sent to every replica)."""

    model: str
    replicas: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 50.0
    device: Optional[str] = None
    follow_alias: bool = False
    poll_s: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    max_side: int = 4096
    max_steps: int = 250
    guidance_range: tuple[float, float] = (0.0, 20.0)
    scheduler: Optional[str] = None  # the default for requests without one; None: the model's sample.scheduler
    steps: Optional[int] = None  # the default steps for requests without them; None: the model's sample.num_steps
    pose_model_path: Optional[str] = None
    tracking_uri: Optional[str] = None
    num_cpus_per_replica: float = 1.0
    num_gpus_per_replica: float = 0.0


class RequestError(Exception):
    """A bad request: HTTP ``status``, the form ``field`` at fault and the ``reason``."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.field, self.reason = status, field, reason


# ------------------------------------------------------------------------------------------------
# Request parsing (plain functions: tested without a server)
# ------------------------------------------------------------------------------------------------

def decode_upload(data: bytes, field: str, *, max_bytes: int, max_side: int) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3), refusing oversize files and decompression bombs
    (the size is read from the header, before any pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(422, field, "empty upload")
    if len(data) > max_bytes:
        raise RequestError(413, field, f"{len(data)} bytes is over the limit of {max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(415, field, f"not an image ({type(e).__name__}: {e})") from None
    if w > max_side or h > max_side:
        raise RequestError(413, field, f"{w}x{h} pixels is over the limit of {max_side} px a side "
                                       "(decompression-bomb guard)")
    try:
        return load_rgb(data, name=field)
    except ImageError as e:
        raise RequestError(415, field, str(e)) from None


def parse_pose_field(value: Any, *, max_bytes: int, max_side: int):
    """The ``pose`` part: a JSON text / file (-> :class:`Pose`) or an image (-> uint8 array to estimate from)."""

    data = value if isinstance(value, bytes) else str(value).encode()
    if data.lstrip()[:1] in (b"{", b"["):
        try:
            obj = json.loads(data)
        except json.JSONDecodeError as e:
            raise RequestError(422, "pose", f"not valid JSON ({e})") from None
        try:
            return parse_pose(obj, name="pose")
        except PoseError as e:
            raise RequestError(422, "pose", str(e).split(": ", 1)[-1]) from None
    return decode_upload(data, "pose", max_bytes=max_bytes, max_side=max_side)


def _bool(v: Any) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def _number(form: dict, field: str, kind, lo: float, hi: float, default: Any) -> Any:
    raw = form.get(field)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        v = kind(str(raw).strip())
    except ValueError:
        raise RequestError(422, field, f"{raw!r} is not a {kind.__name__}") from None
    if not (lo <= v <= hi) or (isinstance(v, float) and not np.isfinite(v)):
        raise RequestError(422, field, f"{v} is out of range [{lo}, {hi}]")
    return v


# ------------------------------------------------------------------------------------------------
# The deployment
# ------------------------------------------------------------------------------------------------

def model_info(ref, folder, meta: dict, cfg, alias: Optional[str]) -> dict[str, Any]:
    """What ``GET /v1/model`` says: the registry's run id and data lineage when the model is registered
    (the `validate` stage's DVC hash: the data the model was trained and evaluated on; for an imported
    checkpoint its sha256), else what the folder's ``pipeline.json`` records."""
    lineage = meta.get("lineage", {}) or {}
    tags = dict(ref.tags)
    data_hash = (tags.get("dvc.stage.validate") or tags.get("checkpoint_sha256") or lineage.get("sha256")
                 or (str(tags.get("manifest.validate.uri", "")).rstrip("/").rsplit("/", 1)[-1] or None))
    return {"name": ref.name, "version": ref.version, "alias": alias, "uri": ref.uri,
            "run_id": ref.run_id or tags.get("train_run_id") or lineage.get("train_run_id"),
            "train_run_id": tags.get("train_run_id") or lineage.get("train_run_id"),
            "data_hash": data_hash,
            "source": meta.get("source", "trained"), "preset": cfg.model.preset, "image_size": cfg.data.image_size,
            "standin_encoders": bool(meta.get("standin")), "folder": str(folder)}


def _alias_of(model: str) -> Optional[str]:
    if model.startswith("models:/") and "@" in model:
        return model.rsplit("@", 1)[1]
    return None


class ServiceCore:
    """What a replica does, without Ray Serve's and FastAPI's decorators (:func:`build_app` adds the
    routes and ``@serve.batch``): load the model (and follow its alias), parse a request, sample a
    batch, answer with a PNG or JSON."""

    def __init__(self, options: dict) -> None:
        import torch

        self.opts = ServeOptions(**{**options, "guidance_range": tuple(options["guidance_range"])})
        self.threads = 0 if torch.cuda.is_available() else max(1, int(round(self.opts.num_cpus_per_replica)))
        # Every torch call of the replica (loading and sampling) runs on this one thread: small CPU ops
        # measured ~1.5x slower on a thread other than the first one that ran OpenMP-parallel work.
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="xmdpt-compute")
        self.alias = _alias_of(self.opts.model)
        self._compute.submit(self._load, self.opts.model).result()
        self._generate_batch.set_max_batch_size(self.opts.max_batch)
        self._generate_batch.set_batch_wait_timeout_s(self.opts.batch_wait_ms / 1000.0)
        self.batch_sizes: list[int] = []
        self.served = 0
        self.switches = 0
        self._stop = threading.Event()
        if self.opts.follow_alias and self.alias:
            threading.Thread(target=self._follow, name="xmdpt-follow-alias", daemon=True).start()

    def _load(self, model: str) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        ref = resolve_model(model, self.opts.tracking_uri)
        pipe = XMDPTPipeline.from_pretrained(ref.uri, device=self.opts.device, tracking_uri=self.opts.tracking_uri)
        if self.opts.pose_model_path:
            pipe.pose_model_path = self.opts.pose_model_path
        info = model_info(ref, pipe.folder, pipe.meta, pipe.cfg, self.alias)
        default = pipe.sample_config(self.opts.steps, scheduler=self.opts.scheduler)
        info.update(scheduler=default.scheduler, num_steps=default.num_steps)
        self.state = (pipe, info)  # swapped as one reference: a batch keeps the pair it started with
        logger.info("serving %s v%s from %s", info["name"], info["version"], info["folder"])

    def _follow(self) -> None:
        """Poll the alias; load a new version beside the serving one, then swap (between batches)."""
        while not self._stop.wait(self.opts.poll_s):
            try:
                ref = resolve_model(self.opts.model, self.opts.tracking_uri)
                if ref.version != self.state[1]["version"]:
                    logger.info("alias @%s moved to v%s: loading", self.alias, ref.version)
                    self._compute.submit(self._load, ref.uri).result()  # between two batches
                    self.switches += 1
            except Exception as e:  # registry down, a broken version: keep serving the loaded one
                logger.warning("alias poll failed (%s); keeping v%s", e, self.state[1]["version"])

    def check_health(self) -> None:
        if self.state is None:
            raise RuntimeError("no model loaded")

    async def handle_generate(self, request: Request):
        """``POST /v1/generate``: a PNG (or JSON) of the generated image, or a 4xx JSON error."""
        from fastapi.responses import JSONResponse, Response  # comes with ray[serve], like the routes

        t0 = time.perf_counter()
        try:
            item = await self._parse(request)
            t1 = time.perf_counter()
            img, info, bsize, compute_s, sc = await self._generate_batch(item)
        except RequestError as e:
            return JSONResponse({"error": {"field": e.field, "reason": e.reason}}, status_code=e.status)
        t2 = time.perf_counter()
        png = _png_bytes(img)
        if item["format"] == "json":
            return JSONResponse({"image": base64.b64encode(png).decode(), "format": "png",
                                 "width": int(img.shape[1]), "height": int(img.shape[0]), "seed": item["seed"],
                                 "model": {"name": info["name"], "version": info["version"]},
                                 "batch_size": bsize, "scheduler": sc[0], "steps": sc[1]})
        headers = {"X-Model-Name": str(info["name"]), "X-Model-Version": str(info["version"]),
                   "X-Batch-Size": str(bsize), "X-Seed": str(item["seed"]),
                   # where the time went: parsing the form, waiting for / in the batch, sampling the batch
                   "X-Timing": f"parse={t1 - t0:.3f};batch={t2 - t1:.3f};compute={compute_s:.3f};"
                               f"encode={time.perf_counter() - t2:.3f};scheduler={sc[0]};steps={sc[1]}"}
        return Response(png, media_type="image/png", headers=headers)

    async def _parse(self, request: Request) -> dict[str, Any]:
        """The request's form, checked; a pose photo is estimated here, per request, before batching."""
        fields = await read_form(request, self.opts.max_bytes)
        item = parse_generate_fields(fields, self.opts)
        if isinstance(item["pose"], np.ndarray):
            pipe = self.state[0]
            try:
                item["pose"] = await asyncio.to_thread(pipe.load_pose, item["pose"], name="pose")
            except PoseError as e:
                raise RequestError(422, "pose", str(e).split(": ", 1)[-1]) from None
        return item

    async def generate_items(self, items: list[dict[str, Any]]) -> list[tuple[np.ndarray, dict, int, float, tuple]]:
        """One batch: its items grouped by sampling settings, each group sampled in one call on the
        compute thread; ``(image, model info, group size, seconds, (scheduler, steps))`` per item."""
        pipe, info = self.state
        results: list[Any] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            key = (it.get("scheduler") or self.opts.scheduler, it["steps"] or self.opts.steps, it["guidance"])
            groups.setdefault(key, []).append(i)
        self.batch_sizes.append(len(items))
        for (scheduler, steps, guidance), idx in groups.items():
            sc = pipe.sample_config(steps, guidance, scheduler=scheduler)
            t = time.perf_counter()
            out = await asyncio.get_running_loop().run_in_executor(
                self._compute, self._run, pipe, [items[i] for i in idx], steps, guidance, scheduler)
            dt = time.perf_counter() - t
            for i, img in zip(idx, out):
                results[i] = (img, info, len(idx), dt, (sc.scheduler, sc.num_steps))
        self.served += len(items)
        return results

    def _run(self, pipe, items: list[dict[str, Any]], steps, guidance, scheduler=None) -> list[np.ndarray]:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        S = pipe.image_size
        arrays = pipe.generate_arrays(np.stack([prepare_source(it["source"], S) for it in items]),
                                      [it["pose"] for it in items], num_steps=steps, cfg_scale=guidance,
                                      seeds=[it["seed"] for it in items], scheduler=scheduler)
        return [a if it["square"] else restore_aspect(a, it["source"].shape[:2]) for a, it in zip(arrays, items)]


async def read_form(request: Request, max_bytes: int) -> dict[str, Any]:
    """The multipart form's fields, file parts read (bytes); a body or part over the size limit is a 413."""
    length = int(request.headers.get("content-length") or 0)
    if length > 2 * max_bytes + 1_000_000:
        raise RequestError(413, "body", f"{length} bytes is over the limit of {2 * max_bytes} bytes")
    try:
        form = await request.form(max_part_size=max_bytes + 1)
    except Exception as e:  # malformed multipart, a part over the size limit
        raise RequestError(413 if "size" in str(e).lower() else 400, "body",
                           f"cannot read the multipart form ({e})") from None
    return {k: await v.read() if isinstance(v, UploadFile) else v for k, v in form.multi_items()}


def parse_generate_fields(fields: dict[str, Any], o: ServeOptions) -> dict[str, Any]:
    """A generation request from its form fields (the uploads read): source image, pose (keypoints,
    or a photo still to estimate), sampling settings and output format; a 4xx naming the field."""
    for required in ("source", "pose"):
        if required not in fields:
            raise RequestError(422, required, "missing (multipart field)")
    if not isinstance(fields["source"], bytes):
        raise RequestError(422, "source", "must be a file part (an image)")
    source = decode_upload(fields["source"], "source", max_bytes=o.max_bytes, max_side=o.max_side)
    pose = parse_pose_field(fields["pose"], max_bytes=o.max_bytes, max_side=o.max_side)
    steps = _number(fields, "steps", int, 1, o.max_steps, None)
    guidance = _number(fields, "guidance", float, o.guidance_range[0], o.guidance_range[1], None)
    seed = _number(fields, "seed", int, 0, 2 ** 31 - 1, 0)
    scheduler = str(fields.get("scheduler") or "").strip().lower() or None
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise RequestError(422, "scheduler", f"{scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
    fmt = str(fields.get("format") or "png").lower()
    if fmt not in ("png", "json"):
        raise RequestError(422, "format", f"{fmt!r}: expected png or json")
    return {"source": source, "pose": pose, "steps": steps, "guidance": guidance, "scheduler": scheduler, "seed": seed,
            "square": _bool(fields.get("square", "")), "format": fmt}


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def build_app(opts: ServeOptions):
    """The Serve application (bind it with ``serve.run``): :class:`ServiceCore` with its routes and
    the batched method (``@serve.batch`` cannot decorate a route)."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI(title="xmdpt", description="Pose-guided person image synthesis (X-MDPT)")

    @serve.deployment(num_replicas=opts.replicas, max_ongoing_requests=max(4 * opts.max_batch, 16),
                      ray_actor_options={"num_cpus": opts.num_cpus_per_replica, "num_gpus": opts.num_gpus_per_replica},
                      health_check_period_s=2, health_check_timeout_s=30)
    @serve.ingress(api)
    class XMDPTService(ServiceCore):
        @api.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok", "version": self.state[1]["version"]}

        @api.get("/v1/model")
        async def model(self) -> dict:
            return {**self.state[1], "replica_pid": os.getpid(), "switches": self.switches}

        @api.get("/v1/stats")
        async def stats(self) -> dict:
            return {"batch_sizes": self.batch_sizes[-1000:], "served": self.served, "replica_pid": os.getpid()}

        @api.post("/v1/generate")
        async def generate(self, request: Request):
            return await self.handle_generate(request)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)  # sizes set per replica in __init__
        async def _generate_batch(self, items: list[dict[str, Any]]) -> list[tuple[np.ndarray, dict, int, float]]:
            return await self.generate_items(items)

    opts_dict = asdict(opts)
    opts_dict["guidance_range"] = list(opts.guidance_range)
    return XMDPTService.bind(opts_dict)


def run_server(opts: ServeOptions, *, host: str = "127.0.0.1", port: int = 8000, blocking: bool = True,
               app_name: str = "xmdpt", route_prefix: str = "/") -> str:
    """Start Ray (local on 127.0.0.1 unless ``$RAY_ADDRESS``), Serve's HTTP proxy on ``host:port`` and the app
    under ``route_prefix`` (several apps can share the proxy, each under its own prefix).

    Returns the app's base URL; with ``blocking`` waits until interrupted, then shuts Serve down.
    """
    from ray import serve

    init_ray()
    if not blocking:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(opts), name=app_name, route_prefix=route_prefix, blocking=False)
        return f"http://{host}:{port}{route_prefix.rstrip('/')}"
    # SIGTERM stops like Ctrl-C, also while starting. Installed after ray.init, which sets its own
    # handler, and again once Serve is up: Ctrl-C must reach this loop whatever Ray and Serve installed
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, _interrupt) for s in stops}
    url = f"http://{host}:{port}{route_prefix.rstrip('/')}"
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(opts), name=app_name, route_prefix=route_prefix, blocking=False)
        for s in stops:
            signal.signal(s, _interrupt)
        logger.info("serving %s at %s", opts.model, url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping: shutting down Serve and Ray")
    finally:
        for s in stops:  # a second signal must not cut the shutdown short
            signal.signal(s, signal.SIG_IGN)
        import ray

        # Ctrl-C in a terminal reaches the whole process group, Ray's own processes too: Serve's
        # graceful shutdown then waits on a controller that is gone, so neither step may block for ever
        _bounded(serve.shutdown, SHUTDOWN_TIMEOUT_S, "Serve")
        _bounded(ray.shutdown, SHUTDOWN_TIMEOUT_S, "Ray")
        for s, handler in previous.items():
            signal.signal(s, handler)
    return url


SHUTDOWN_TIMEOUT_S = 20.0


def _bounded(step: Callable[[], Any], timeout_s: float, what: str) -> None:
    """Run ``step`` for at most ``timeout_s`` seconds (in a daemon thread, so a hung step is left behind)."""
    done = threading.Event()

    def run() -> None:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - shutting down: report, go on
            logger.warning("%s shutdown failed: %s", what, e)
        finally:
            done.set()

    threading.Thread(target=run, name=f"{what}-shutdown", daemon=True).start()
    if not done.wait(timeout_s):
        logger.warning("%s did not shut down within %.0f s (its processes were stopped with the process group); "
                       "leaving it", what, timeout_s)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
