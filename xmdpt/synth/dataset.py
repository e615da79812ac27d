"""Writing the synthetic dataset in exactly the DeepFashion In-shop layout (both annotation layouts)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from xmdpt.data.deepfashion import path_to_fashion_name, pose_txt_path
from xmdpt.data.keypoints import image_frame_to_pidm_txt, kps_to_gfla_lists
from xmdpt.data.schema import NUM_KEYPOINTS
from xmdpt.synth.figure import CATEGORIES, IMAGE_HW
from xmdpt.synth.render import render_identity_views

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95
# The layout files this module writes; anything else in `out` is someone else's and stops us.
_OWN_ENTRIES = ("img", "pose", "fasion-resize-pairs-train.csv", "fasion-resize-pairs-test.csv",
                "fasion-resize-annotation-train.csv", "fasion-resize-annotation-test.csv",
                "train.lst", "test.lst", "train_pairs.txt", "test_pairs.txt")

# --------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign:
            raise FileExistsError(f"{out}: not empty and holds files the synthetic generator did not write "
                                  f"({foreign[:5]}); choose an empty or new folder")
        for name in _OWN_ENTRIES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="\n", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


@dataclass
class _Written:
    """What the identities wrote, per split: fashion names, GFLA annotation rows, image paths per identity."""

    images: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "test": []})
    annotations: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "test": []})
    groups: dict[str, list[list[str]]] = field(default_factory=lambda: {"train": [], "test": []})
    missing: int = 0  # keypoints missing over all images


def _write_view(root: Path, rel: str, image: np.ndarray, kps: np.ndarray) -> None:
    """One view: its JPEG at ``rel`` and its PIDM pose file."""
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(dst, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    pose_path = root / pose_txt_path(rel)
    pose_path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(pose_path, image_frame_to_pidm_txt(kps, IMAGE_HW), fmt="%.1f")


def _write_identities(root: Path, identities: int, seed: int, test_fraction: float) -> _Written:
    """Render and write every view of every identity; collect what the list files need."""
    rng = np.random.default_rng(seed)
    n_test = min(identities - 1, max(1, int(round(identities * test_fraction))))
    test_ids = set(rng.permutation(identities)[:n_test].tolist())
    child_seeds = np.random.SeedSequence(seed).spawn(identities)
    written = _Written()
    for i in range(identities):
        gender = "WOMEN" if rng.random() < 0.6 else "MEN"
        category = str(rng.choice(CATEGORIES[gender]))
        person = f"id_{i + 1:08d}"
        split = "test" if i in test_ids else "train"
        id_seed = int(child_seeds[i].generate_state(1)[0])
        paths = []
        for view, image, kps, _mask in render_identity_views(id_seed, gender, category):
            rel = f"img/{gender}/{category}/{person}/01_{view}.jpg"
            _write_view(root, rel, image, kps)
            ys, xs = kps_to_gfla_lists(kps)
            name = path_to_fashion_name(rel)
            written.annotations[split].append(f"{name}: {ys}: {xs}")
            written.images[split].append(name)
            written.missing += int((kps[:, 0] < 0).sum())
            paths.append(rel)
        written.groups[split].append(paths)
    return written


def _pair_lines(split: str, groups: list[list[str]]) -> tuple[list[str], list[str], int]:
    """GFLA pair csv rows and PIDM pair-file lines of one split, and its number of pairs."""
    pair_rows, pidm_lines = [",from,to"], []
    n_pairs = 0
    for paths in groups:
        for target in paths:
            sources = [p for p in paths if p != target]
            for source in sources:
                pair_rows.append(f"{n_pairs},{path_to_fashion_name(source)},{path_to_fashion_name(target)}")
                n_pairs += 1
            if split == "train":  # PIDM train lines: one target, all candidate sources
                pidm_lines.append(",".join([target] + sources))
            else:  # PIDM test lines: one (target, source) pair each
                pidm_lines.extend(f"{target},{source}" for source in sources)
    return pair_rows, pidm_lines, n_pairs


def write_synthetic_dataset(out: str, identities: int = 40, seed: int = 0, test_fraction: float = 0.2) -> dict:
    """Write a synthetic DeepFashion In-shop dataset (both public annotation layouts) under ``out``.

    Args:
        out: local folder (created; a previous synthetic dataset there is replaced, any other
            content is an error).
        identities: number of people; each gets all 5 views.
        seed: same seed -> byte-identical files.
        test_fraction: share of identities held out for test (train and test identities are disjoint).

    Returns:
        summary: ``images, identities, train_identities, test_identities, train_images, test_images,
        train_pairs, test_pairs, keypoints_missing_fraction``.
    """
    if identities < 2:
        raise ValueError(f"identities: need at least 2 (one train, one test), got {identities}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction}")
    root = Path(out)
    _prepare_out(root)
    written = _write_identities(root, identities, seed, test_fraction)

    summary = {"images": 0, "identities": identities, "seed": seed}
    for split in ("train", "test"):
        pair_rows, pidm_lines, n_pairs = _pair_lines(split, written.groups[split])
        _write_text(root / f"fasion-resize-pairs-{split}.csv", pair_rows)
        _write_text(root / f"fasion-resize-annotation-{split}.csv",
                    ["name:keypoints_y:keypoints_x"] + written.annotations[split])
        _write_text(root / f"{split}.lst", written.images[split])
        _write_text(root / f"{split}_pairs.txt", pidm_lines)
        summary[f"{split}_identities"] = len(written.groups[split])
        summary[f"{split}_images"] = len(written.images[split])
        summary[f"{split}_pairs"] = n_pairs
        summary["images"] += len(written.images[split])
    summary["keypoints_missing_fraction"] = round(written.missing / (summary["images"] * NUM_KEYPOINTS), 4)
    logger.info("synthetic DeepFashion: %d images of %d identities (%d train / %d test) in %s",
                summary["images"], identities, summary["train_identities"], summary["test_identities"], out)
    return summary
