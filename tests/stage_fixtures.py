"""Fixtures for the data stages: tiny DeepFashion trees in both public layouts, and a local S3.

The S3 API is moto's server on 127.0.0.1 (a real HTTP endpoint, port chosen by the OS). It starts
when this file is imported, so that ``AWS_ENDPOINT_URL`` and the test credentials are in
``os.environ`` before the session's shared Ray instance starts: Ray Data tasks run in worker
processes, which inherit the environment Ray was started with.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
from PIL import Image

from moto.server import ThreadedMotoServer

_S3_SERVER = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
_S3_SERVER.start()
_S3_HOST, _S3_PORT = _S3_SERVER.get_host_and_port()
S3_ENDPOINT = f"http://{_S3_HOST}:{_S3_PORT}"
os.environ.update({
    "AWS_ENDPOINT_URL": S3_ENDPOINT,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
})

# (gender, category) of the fixture identities; underscores in categories exercise the flattening.
IDENTITIES = (("MEN", "Denim"), ("WOMEN", "Blouses_Shirts"), ("MEN", "Jackets_Vests"),
              ("WOMEN", "Dresses"), ("MEN", "Tees_Tanks"), ("WOMEN", "Skirts"))
VIEWS = ("01_1_front", "01_2_side", "01_4_full")
IMAGE_HW = (256, 176)  # the DeepFashion low-res frame the public annotations are written in
# A standing person in the 256x176 frame, COCO-18 order (x, y).
BASE_POSE = np.array([
    [88, 40], [88, 62], [68, 64], [60, 96], [58, 126], [108, 64], [116, 96], [118, 126], [76, 132],
    [74, 182], [74, 228], [100, 132], [102, 182], [102, 228], [84, 36], [92, 36], [80, 38], [96, 38],
], dtype=np.float32)


def image_path(i: int, view: str) -> str:
    gender, category = IDENTITIES[i]
    return f"img/{gender}/{category}/id_{i + 1:08d}/{view}.jpg"


def fashion_name(rel: str) -> str:
    """Flattened name written independently of the library (PAPER.md §2.1)."""
    _, gender, category, ident, filename = rel.split("/")
    item, view, rest = filename.split("_", 2)
    return f"fashion{gender}{category}{ident.replace('_', '')}{item}_{view}{rest}"


def photo(i: int, k: int, hw: tuple[int, int] = IMAGE_HW) -> np.ndarray:
    """A real photograph (skimage's astronaut), cropped and tinted per identity/view. uint8 (H, W, 3)."""
    from skimage import data

    img = data.astronaut()  # (512, 512, 3)
    x0 = 60 + 12 * k
    crop = Image.fromarray(img[0:512, x0:x0 + 352])
    crop = crop.resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
    arr = np.asarray(crop).astype(np.int16)
    arr[..., i % 3] = np.clip(arr[..., i % 3] + 25, 0, 255)
    if k == 1:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr.astype(np.uint8))


def pose_of(i: int, k: int) -> np.ndarray:
    """Image-frame keypoints of image (i, k): the base pose shifted; the left ear missing on view 2."""
    kps = BASE_POSE + np.array([2 * i - 5, k], dtype=np.float32)
    if k == 2:
        kps[17] = -1
    return kps


def write_deepfashion(root: Path, layouts: Iterable[str] = ("pidm", "gfla"), test_ids: Iterable[int] = (4, 5),
                      unannotated: Iterable[str] = ()) -> dict:
    """Write a 6-identity x 3-view DeepFashion tree with the annotation files of ``layouts``.

    ``unannotated``: image paths whose annotation rows/files are left out (the estimator runs on them).
    Returns ``{"images": [...], "split": {path: split}, "pairs": {(split, target, source)}, "poses": {path: (18,2)}}``.
    """
    root = Path(root)
    layouts, test_ids, unannotated = set(layouts), set(test_ids), set(unannotated)
    split_of, poses, pairs = {}, {}, set()
    lines = {"train": [], "test": []}
    csv_rows = {"train": [], "test": []}
    ann_rows = {"train": [], "test": []}
    lists = {"train": [], "test": []}
    for i in range(len(IDENTITIES)):
        split = "test" if i in test_ids else "train"
        paths = [image_path(i, v) for v in VIEWS]
        for k, rel in enumerate(paths):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(i, k)).save(root / rel, quality=92)
            split_of[rel] = split
            poses[rel] = pose_of(i, k)
            lists[split].append(fashion_name(rel))
            if rel in unannotated:
                continue
            kps = poses[rel]
            xs = [int(x) for x in kps[:, 0]]
            ys = [int(y) for y in kps[:, 1]]
            ann_rows[split].append(f"{fashion_name(rel)}: {ys}: {xs}")
            if "pidm" in layouts:
                txt = root / ("pose" + rel[len("img"):-len(".jpg")] + ".txt")
                txt.parent.mkdir(parents=True, exist_ok=True)
                pidm = kps.copy()
                pidm[pidm[:, 0] >= 0, 0] += 40
                txt.write_text("".join(f"{x:g} {y:g}\n" for x, y in pidm))
        for t in paths:
            sources = [s for s in paths if s != t]
            lines[split].append(",".join([t, *sources]))
            for s in sources:
                pairs.add((split, t, s))
                csv_rows[split].append(f"{fashion_name(s)},{fashion_name(t)}")
    for split in ("train", "test"):
        (root / f"{split}.lst").write_text("".join(n + "\n" for n in lists[split]))
        if "pidm" in layouts:
            (root / f"{split}_pairs.txt").write_text("".join(line + "\n" for line in lines[split]))
        if "gfla" in layouts:
            (root / f"fasion-resize-pairs-{split}.csv").write_text(
                "from,to\n" + "".join(r + "\n" for r in csv_rows[split]))
            (root / f"fasion-resize-annotation-{split}.csv").write_text(
                "name:keypoints_y:keypoints_x\n" + "".join(r + "\n" for r in ann_rows[split]))
    return {"images": sorted(split_of), "split": split_of, "pairs": pairs, "poses": poses}


def encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def stage_config(tmp: Path, dataset_root: str, pose_task: Path, storage_root: str | None = None, **data):
    """A config whose stages read ``dataset_root`` and write under ``tmp``."""
    from tiny_config import tiny_config

    return tiny_config().replace(
        paths={"dataset_root": str(dataset_root), "storage_root": storage_root or str(tmp / "store"),
               "artifacts_dir": str(tmp / "artifacts")},
        data={"num_cpus_per_task": 0.5, **data},
        poses={"model_path": str(pose_task)},
    )


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    return S3_ENDPOINT


# ---- the bad-input fixture (PIDM layout) -----------------------------------------------------

UNANNOTATED = (image_path(0, "01_1_front"), image_path(5, "01_2_side"))
OUT_OF_RANGE = image_path(2, "01_1_front")  # its pose txt puts the nose at x = 900 (image is 176 wide)
MALFORMED_POSE = image_path(3, "01_2_side")  # its pose txt has 17 rows
LARGE = image_path(4, "01_1_front")  # written at 512x352 in the GFLA fixture
ID0 = "img/MEN/Denim/id_00000001"
ID1 = "img/WOMEN/Blouses_Shirts/id_00000002"
CONVERTED = {f"{ID1}/01_5_gray.jpg": "L", f"{ID1}/01_6_rgba.png": "RGBA", f"{ID1}/01_7_cmyk.jpg": "CMYK"}


def add_bad_inputs(root: Path, outside: Path) -> dict:
    """Add every kind of bad input to a PIDM-layout tree; returns what each one is called."""
    root = Path(root)
    target = f"{ID0}/01_1_front.jpg"
    good = photo(0, 0)
    jpeg = encode(good, "JPEG")
    (root / ID0 / "01_6_trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = bytearray(encode(good, "PNG"))
    mid = len(png) // 2
    png[mid:mid + 64] = bytes(64)  # zeroed bytes inside the compressed pixel data
    (root / ID0 / "01_7_corrupt.png").write_bytes(bytes(png))
    outside.mkdir(parents=True, exist_ok=True)
    outside_file = outside / "outside.jpg"
    outside_file.write_bytes(jpeg)  # a perfectly readable image outside the dataset root
    (root / ID0 / "01_8_link.jpg").symlink_to(outside_file)
    for rel, mode in CONVERTED.items():
        fmt = "PNG" if rel.endswith(".png") else "JPEG"
        arr = photo(1, 0)
        if mode == "RGBA":
            img = Image.fromarray(arr).convert("RGBA")
            img.putalpha(200)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            data = buf.getvalue()
        else:
            data = encode(arr, fmt, mode)
        (root / rel).write_bytes(data)
    # the pose txt of one image has an out-of-range point, another has 17 rows
    txt = root / ("pose" + OUT_OF_RANGE[3:-4] + ".txt")
    rows = txt.read_text().splitlines()
    rows[0] = "940 40"  # PIDM frame: x - 40 = 900 in the 176-wide image
    txt.write_text("\n".join(rows) + "\n")
    txt = root / ("pose" + MALFORMED_POSE[3:-4] + ".txt")
    txt.write_text("\n".join(txt.read_text().splitlines()[:17]) + "\n")

    pairs_file = root / "train_pairs.txt"
    first_line = pairs_file.read_text().splitlines()[0]
    extra = {
        "missing": f"{target},{ID0}/01_5_missing.jpg",
        "truncated": f"{target},{ID0}/01_6_trunc.jpg",
        "corrupt": f"{target},{ID0}/01_7_corrupt.png",
        "dotdot": f"{target},../outside/outside.jpg",
        "absolute": f"{target},{outside_file}",
        "duplicate": first_line,  # two (target, source) pairs, both already present
        "malformed": target,
        "converted": ",".join([f"{ID1}/01_1_front.jpg", *CONVERTED]),
        "symlink": f"{target},{ID0}/01_8_link.jpg",
    }
    lines = pairs_file.read_text().splitlines()
    line_of = {}
    for name, line in extra.items():
        lines.append(line)
        line_of[name] = len(lines)
    pairs_file.write_text("\n".join(lines) + "\n")
    return {"line_of": line_of, "outside_file": outside_file}


def run_chain(cfg) -> dict:
    """pairs -> poses -> validate, the three stage functions unchanged."""
    from xmdpt.data.pairs import build_pairs
    from xmdpt.data.poses import extract_poses
    from xmdpt.data.validation import validate_dataset

    pairs = build_pairs(cfg)
    poses = extract_poses(cfg)
    validate, report = validate_dataset(cfg)
    return {"pairs": pairs, "poses": poses, "validate": validate, "report": report}


def load(entry: dict):
    """A stage table from its manifest entry, the documented way (pyarrow.dataset + fsspec)."""
    import pyarrow.dataset as pads

    from xmdpt.core.storage import filesystem

    fs, path = filesystem(entry["uri"])
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas()


@pytest.fixture(scope="session")
def pidm_bad_chain(ray_local, tmp_path_factory, pose_task_path):
    """The PIDM-layout fixture with every bad input, through pairs -> poses -> validate."""
    tmp = tmp_path_factory.mktemp("pidm_bad")
    info = write_deepfashion(tmp / "ds", layouts=("pidm",), unannotated=UNANNOTATED)
    info.update(add_bad_inputs(tmp / "ds", tmp / "outside"))
    cfg = stage_config(tmp, tmp / "ds", pose_task_path)
    return {"cfg": cfg, "info": info, **run_chain(cfg)}


@pytest.fixture(scope="session")
def gfla_chain(ray_local, tmp_path_factory, pose_task_path):
    """The GFLA-csv-only fixture (plus a malformed and a duplicate csv row) through the same stages."""
    tmp = tmp_path_factory.mktemp("gfla")
    info = write_deepfashion(tmp / "ds", layouts=("gfla",), unannotated=UNANNOTATED)
    csv_file = tmp / "ds" / "fasion-resize-pairs-train.csv"
    rows = csv_file.read_text().splitlines()
    rows += [rows[1], "fashionMENDenimid0000000101_1front.jpg"]  # duplicate row; malformed row (1 field)
    csv_file.write_text("\n".join(rows) + "\n")
    info["bad_lines"] = {"duplicate": len(rows) - 1, "malformed": len(rows)}
    # one image at twice the annotation frame's size: its keypoints must come out scaled x2
    Image.fromarray(photo(4, 0, (2 * IMAGE_HW[0], 2 * IMAGE_HW[1]))).save(tmp / "ds" / LARGE, quality=92)
    cfg = stage_config(tmp, tmp / "ds", pose_task_path)
    return {"cfg": cfg, "info": info, **run_chain(cfg)}


@pytest.fixture(scope="session")
def dfx():
    """The helpers above, for test modules (conftest is not importable as a module)."""
    import types

    return types.SimpleNamespace(
        write_deepfashion=write_deepfashion, stage_config=stage_config, load=load, run_chain=run_chain,
        image_path=image_path, fashion_name=fashion_name, photo=photo, encode=encode,
        ID0=ID0, ID1=ID1, CONVERTED=CONVERTED, UNANNOTATED=UNANNOTATED, OUT_OF_RANGE=OUT_OF_RANGE,
        MALFORMED_POSE=MALFORMED_POSE, IMAGE_HW=IMAGE_HW, LARGE=LARGE,
    )


# ------------------------------------------------------------------------------------------------
# A real MLflow tracking + registry server on 127.0.0.1 (for the registry consumers)
# ------------------------------------------------------------------------------------------------
import sys  # noqa: E402

from local_servers import LocalServer, free_port as _free_port, mlflow_server_cmd  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real tracking + registry server with proxied artifacts, in its own process: one per session,
    shared by the registry consumers' tests (each registers under its own model name).

    Started here, awaited (``/health``) by the test, so that its start-up overlaps the fixtures after it.
    """
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    server = LocalServer(mlflow_server_cmd(BIN, root, port), root / "server.log", port, "/health")
    yield server.wait
    server.stop()


@pytest.fixture
def free_port():
    """A function returning a free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture
def local_server():
    """Start ``LocalServer(cmd, log, port, health, env)`` processes; all are stopped after the test."""
    started: list[LocalServer] = []

    def start(cmd: list[str], log: Path, port: int, health: str, env: dict | None = None) -> LocalServer:
        started.append(LocalServer(cmd, log, port, health, env))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny pipeline folder (random-init model, stand-in encoders) for generate / generate-batch."""
    from tiny_pipeline_folder import build_tiny_pipeline_folder

    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("tiny"))
