"""DeepFashion In-shop readers: the two public annotation layouts and the raw image tree.

Layouts (``data.layout``; ``auto`` picks the first one present, in this order):

- ``pidm`` — PIDM / X-MDPT: ``train_pairs.txt`` / ``test_pairs.txt`` (comma-separated relative
  paths, **target first**, then one or more candidate sources) and ``pose/**.txt`` (18x2, ``x y``
  per line, ``-1`` missing, in the 256x256 low-res frame with a 40-px white border left and right).
- ``gfla`` — PATN / GFLA / DPTN / CFLD: ``fasion-resize-pairs-{train,test}.csv`` (``from,to`` =
  source, target, flattened "fashion names") and ``fasion-resize-annotation-{train,test}.csv``
  (``name:keypoints_y:keypoints_x``, JSON lists in the 256x176 frame).
- ``inshop`` — only ``img/{MEN,WOMEN}/<category>/id_XXXXXXXX/NN_V_view.jpg``: pairs are built as
  the ordered pairs of different images of the same identity; the split comes from
  ``train.lst`` / ``test.lst`` when present, else from a hash of the identity.

Every path handed out is POSIX, relative to the dataset root, and has gone through
:func:`safe_join`'s checks: nothing here ever reads outside the root. Readers never raise on a
bad row: they return it as a :class:`Problem` (row key + reason) and carry on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from xmdpt.data.keypoints import GFLA_FRAME_HW, gfla_lists_to_kps, pidm_txt_to_image_frame, scale_keypoints
from xmdpt.data.schema import NUM_KEYPOINTS
from xmdpt.ops.storage import filesystem, is_url

logger = logging.getLogger(__name__)

LAYOUTS = ("pidm", "gfla", "inshop")
IMAGE_DIR = "img"
POSE_DIR = "pose"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

PIDM_PAIR_FILES = {"train": "train_pairs.txt", "test": "test_pairs.txt"}
GFLA_PAIR_FILES = {"train": "fasion-resize-pairs-train.csv", "test": "fasion-resize-pairs-test.csv"}
GFLA_ANNOTATION_FILES = {"train": "fasion-resize-annotation-train.csv", "test": "fasion-resize-annotation-test.csv"}
SPLIT_LIST_FILES = {"train": "train.lst", "test": "test.lst"}


_FASHION_RE = re.compile(
    r"^fashion(?P<gender>WOMEN|MEN)(?P<category>[A-Za-z0-9&-]+(?:_[A-Za-z0-9&-]+)*?)"
    r"id(?P<id>\d{8})(?P<item>\d+)_(?P<rest>[^/\\_]+)$"
)
_FILE_RE = re.compile(r"^(?P<item>\d+)_(?P<view>\d+)_(?P<name>[^/\\]+)$")
_VIEW_SPLIT_RE = re.compile(r"^(?P<view>\d+)(?P<name>\D[^/\\]*)$")


class UnsafePathError(ValueError):
    """A dataset-relative name would leave the dataset root (``..``, absolute, URL, drive)."""


@dataclass(frozen=True)
class Problem:
    """One bad input row: what identifies it (``file:line N`` or a path) and why it was rejected."""

    row_key: str
    reason: str


@dataclass(frozen=True)
class PairRecord:
    """One (target, source) candidate pair read from the dataset, before any file check."""

    split: str
    person_id: str
    target_path: str
    source_path: str
    row_key: str  # where it came from: "train_pairs.txt:line 3 source 1"

    @property
    def pair_id(self) -> str:
        """``{split}:{source fashion name}_2_{target fashion name}`` (the authors' output naming)."""
        return f"{self.split}:{path_to_fashion_name(self.source_path)}_2_{path_to_fashion_name(self.target_path)}"


@dataclass
class PairsReadout:
    """What a layout reader found: candidate pairs plus the rows it had to reject."""

    layout: str
    pairs: list[PairRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def input_rows(self) -> int:
        return len(self.pairs) + len(self.problems)


@dataclass(frozen=True)
class Annotation:
    """Keypoints of one image as written in an annotation file, before conversion.

    Attributes:
        keypoints: (18, 2) float32 ``(x, y)`` in the layout's annotation frame, -1 = missing.
        layout: ``gfla`` or ``pidm`` (which frame ``keypoints`` are in).
        row_key: the file (and line) the annotation came from.
    """

    keypoints: np.ndarray
    layout: str
    row_key: str


# --------------------------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------------------------


def path_to_fashion_name(path: str) -> str:
    """Flatten an In-shop image path into the PATN/GFLA "fashion name".

    ``img/WOMEN/Blouses_Shirts/id_00006370/03_1_front.jpg`` ->
    ``fashionWOMENBlouses_Shirtsid0000637003_1front.jpg``: the ``_`` of the id folder is dropped,
    the first ``_`` of the file name is kept and the second one dropped, and the parts are
    concatenated after ``fashion``.
    """
    parts = posixpath.normpath(str(path)).split("/")
    if len(parts) != 5 or parts[0] != IMAGE_DIR:
        raise ValueError(f"{path!r}: not an In-shop image path (expected img/<gender>/<category>/id_<8 digits>/<file>)")
    _, gender, category, ident, filename = parts
    if gender not in ("MEN", "WOMEN") or not re.fullmatch(r"id_\d{8}", ident):
        raise ValueError(f"{path!r}: not an In-shop image path (gender MEN|WOMEN, folder id_<8 digits>)")
    m = _FILE_RE.match(filename)
    if m is None:
        raise ValueError(f"{path!r}: file name {filename!r} is not NN_V_view.ext")
    return f"fashion{gender}{category}{ident.replace('_', '')}{m['item']}_{m['view']}{m['name']}"


def fashion_name_to_path(name: str) -> str:
    """Inverse of :func:`path_to_fashion_name` (raises ``ValueError`` naming ``name`` if it is not one)."""
    m = _FASHION_RE.match(str(name))
    rest = _VIEW_SPLIT_RE.match(m["rest"]) if m else None
    if m is None or rest is None:
        raise ValueError(f"{name!r}: not a fashion name "
                         "(expected fashion<MEN|WOMEN><Category>id<8 digits><NN>_<V><view>.<ext>)")
    return (f"{IMAGE_DIR}/{m['gender']}/{m['category']}/id_{m['id']}/"
            f"{m['item']}_{rest['view']}_{rest['name']}")


def person_id_of(path: str) -> str:
    """``img/MEN/Denim/id_00000080/01_1_front.jpg`` -> ``MEN/Denim/id_00000080``."""
    parts = str(path).split("/")
    if len(parts) != 5 or parts[0] != IMAGE_DIR:
        raise ValueError(f"{path!r}: not an In-shop image path (expected img/<gender>/<category>/id_<8 digits>/<file>)")
    return "/".join(parts[1:4])


def pose_txt_path(image_path: str) -> str:
    """PIDM pose file of an image: ``img/…/01_1_front.jpg`` -> ``pose/…/01_1_front.txt``."""
    stem, _ = posixpath.splitext(image_path)
    return POSE_DIR + stem[len(IMAGE_DIR):] + ".txt"


def resolve_root(root: str) -> str:
    """A dataset/storage root usable from any process: local paths made absolute, URLs unchanged."""
    return str(root) if is_url(str(root)) else os.path.abspath(root)


def check_relative(rel: str) -> str:
    """Return ``rel`` as a normalised POSIX path or raise :class:`UnsafePathError` saying why."""
    rel = str(rel).strip()
    if not rel:
        raise UnsafePathError("empty path")
    if "\x00" in rel:
        raise UnsafePathError(f"{rel!r}: NUL byte in path")
    if "\\" in rel:
        raise UnsafePathError(f"{rel!r}: backslash in path (paths are POSIX, relative to the dataset root)")
    if "://" in rel or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", rel):
        raise UnsafePathError(f"{rel!r}: URL or drive letter, expected a path relative to the dataset root")
    if rel.startswith("/") or rel.startswith("~"):
        raise UnsafePathError(f"{rel!r}: absolute path, expected a path relative to the dataset root")
    parts = rel.split("/")
    if ".." in parts:
        raise UnsafePathError(f"{rel!r}: '..' would leave the dataset root")
    return "/".join(p for p in parts if p not in ("", "."))


def safe_join(root: str, rel: str) -> str:
    """Join a dataset-relative name onto ``root`` (local folder or fsspec URL), refusing to leave it.

    Rejects ``..`` components, absolute paths, URLs, drive letters and backslashes; for local
    roots the joined path is also resolved (symlinks included) and must stay under the resolved
    root. Raises :class:`UnsafePathError` naming ``rel`` and the reason.
    """
    clean = check_relative(rel)
    root = str(root)
    if is_url(root):
        return posixpath.join(root.rstrip("/"), clean)
    joined = os.path.join(root, *clean.split("/"))
    real_root = os.path.realpath(root)
    real = os.path.realpath(joined)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(f"{rel!r}: resolves to {real}, outside the dataset root {real_root}")
    return joined


# --------------------------------------------------------------------------------------------
# Dataset access
# --------------------------------------------------------------------------------------------


def _exists(root: str, rel: str) -> bool:
    fs, path = filesystem(safe_join(root, rel))
    return fs.isfile(path)


def _read_text(root: str, rel: str) -> str:
    fs, path = filesystem(safe_join(root, rel))
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def read_bytes(root: str, rel: str) -> bytes:
    """Bytes of a dataset file (``rel`` checked by :func:`safe_join`). ``FileNotFoundError`` if absent."""
    fs, path = filesystem(safe_join(root, rel))
    with fs.open(path, "rb") as f:
        return f.read()


def list_images(root: str) -> list[str]:
    """Every image under ``{root}/img`` as sorted root-relative POSIX paths."""
    fs, base = filesystem(str(root))
    img_base = posixpath.join(base.rstrip("/"), IMAGE_DIR) if is_url(str(root)) else os.path.join(base, IMAGE_DIR)
    if not fs.isdir(img_base):
        return []
    out = []
    prefix = fs._strip_protocol(base).rstrip("/") + "/"
    for p in fs.find(img_base):
        p = fs._strip_protocol(p)
        if p.lower().endswith(IMAGE_EXTENSIONS) and p.startswith(prefix):
            out.append(p[len(prefix):])
    return sorted(out)


def detect_layout(root: str, layout: str = "auto") -> str:
    """Resolve ``data.layout``: ``auto`` -> ``pidm`` if its pair files exist, else ``gfla``, else ``inshop``."""
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"unknown layout {layout!r}; expected one of {['auto', *sorted(LAYOUTS)]}")
    if layout != "auto":
        return layout
    if any(_exists(root, f) for f in PIDM_PAIR_FILES.values()):
        return "pidm"
    if any(_exists(root, f) for f in GFLA_PAIR_FILES.values()):
        return "gfla"
    if list_images(root):
        return "inshop"
    raise FileNotFoundError(
        f"{root}: no DeepFashion layout found (looked for {sorted(PIDM_PAIR_FILES.values())}, "
        f"{sorted(GFLA_PAIR_FILES.values())} and an {IMAGE_DIR}/ tree)")


def dataset_fingerprint(root: str) -> str:
    """Stable hash of the dataset's content: every file's relative path, size and version tag
    (S3 ETag or local mtime) plus the full bytes of the top-level list/annotation files."""
    fs, base = filesystem(str(root))
    prefix = fs._strip_protocol(base).rstrip("/") + "/"
    h = hashlib.sha256()
    for p, info in sorted(fs.find(base, detail=True).items()):
        rel = fs._strip_protocol(p)[len(prefix):]
        tag = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        h.update(f"{rel}\0{info.get('size')}\0{tag}\n".encode())
        if "/" not in rel:  # pair lists, annotation csvs, split lists: small, hash their bytes
            with fs.open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Pair readers
# --------------------------------------------------------------------------------------------


def _make_pair(split: str, target: str, source: str, row_key: str) -> PairRecord:
    """Validate one candidate pair's names; raises ``ValueError`` with the reason."""
    target, source = check_relative(target), check_relative(source)
    for role, p in (("target", target), ("source", source)):
        if not p.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"{role} {p!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    if target == source:
        raise ValueError(f"source equals target {target!r}")
    person = person_id_of(target)
    path_to_fashion_name(target), path_to_fashion_name(source)  # both must have an In-shop name
    if person_id_of(source) != person:
        raise ValueError(f"source {source!r} and target {target!r} are different identities")
    return PairRecord(split=split, person_id=person, target_path=target, source_path=source, row_key=row_key)


def _dedupe(readout: PairsReadout) -> PairsReadout:
    """Keep the first occurrence of each (split, target, source); later ones become problems."""
    seen: dict[tuple[str, str, str], str] = {}
    kept = []
    for p in readout.pairs:
        key = (p.split, p.target_path, p.source_path)
        if key in seen:
            readout.problems.append(Problem(p.row_key, f"{p.row_key}: duplicate pair (first at {seen[key]})"))
        else:
            seen[key] = p.row_key
            kept.append(p)
    readout.pairs = kept
    return readout


def read_pidm_pairs(root: str) -> PairsReadout:
    """``train_pairs.txt`` / ``test_pairs.txt``: target first, then the candidate sources."""
    out = PairsReadout(layout="pidm")
    for split, fname in PIDM_PAIR_FILES.items():
        if not _exists(root, fname):
            logger.warning("%s: not found; the %s split has no pairs", fname, split)
            continue
        for lineno, line in enumerate(_read_text(root, fname).splitlines(), start=1):
            if not line.strip():
                continue
            items = [x.strip() for x in line.split(",")]
            if len(items) < 2 or any(not x for x in items):
                key = f"{fname}:line {lineno}"
                out.problems.append(Problem(key, f"{key}: malformed row {line[:200]!r} "
                                                 "(expected target,source[,source...])"))
                continue
            for k, src in enumerate(items[1:], start=1):
                key = f"{fname}:line {lineno} source {k}"
                try:
                    out.pairs.append(_make_pair(split, items[0], src, key))
                except ValueError as e:
                    out.problems.append(Problem(key, f"{key}: {e}"))
    return _dedupe(out)


def read_gfla_pairs(root: str) -> PairsReadout:
    """``fasion-resize-pairs-{train,test}.csv``: header ``from,to`` (source, target fashion names)."""
    out = PairsReadout(layout="gfla")
    for split, fname in GFLA_PAIR_FILES.items():
        if not _exists(root, fname):
            logger.warning("%s: not found; the %s split has no pairs", fname, split)
            continue
        rows = list(csv.reader(io.StringIO(_read_text(root, fname))))
        if not rows:
            continue
        header = [h.strip() for h in rows[0]]
        if "from" not in header or "to" not in header:
            key = f"{fname}:line 1"
            out.problems.append(Problem(key, f"{key}: header {rows[0]!r} lacks 'from' and 'to' columns"))
            continue
        i_from, i_to = header.index("from"), header.index("to")
        for lineno, row in enumerate(rows[1:], start=2):
            if not row or not any(c.strip() for c in row):
                continue
            key = f"{fname}:line {lineno}"
            if len(row) != len(header):
                out.problems.append(Problem(key, f"{key}: malformed row {','.join(row)[:200]!r} "
                                                 f"({len(row)} fields, header has {len(header)})"))
                continue
            try:
                source = fashion_name_to_path(row[i_from].strip())
                target = fashion_name_to_path(row[i_to].strip())
                out.pairs.append(_make_pair(split, target, source, key))
            except ValueError as e:
                out.problems.append(Problem(key, f"{key}: {e}"))
    return _dedupe(out)


def read_split_lists(root: str) -> tuple[dict[str, str], list[Problem]]:
    """``train.lst`` / ``test.lst`` (flattened names) -> ``{image path: split}`` (empty if absent)."""
    split_of: dict[str, str] = {}
    problems: list[Problem] = []
    for split, fname in SPLIT_LIST_FILES.items():
        if not _exists(root, fname):
            continue
        for lineno, line in enumerate(_read_text(root, fname).splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            try:
                split_of.setdefault(fashion_name_to_path(name), split)
            except ValueError as e:
                problems.append(Problem(f"{fname}:line {lineno}", f"{fname}:line {lineno}: {e}"))
    return split_of, problems


def hash_split(person_id: str, test_fraction: float) -> str:
    """Deterministic identity split: ``test`` iff sha256(person id) falls below ``test_fraction``."""
    u = int(hashlib.sha256(person_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test_fraction else "train"


def read_inshop_pairs(root: str, test_fraction: float) -> PairsReadout:
    """Raw ``img/`` tree: all ordered pairs of different images of one identity (within a split)."""
    out = PairsReadout(layout="inshop")
    split_of, list_problems = read_split_lists(root)
    out.problems.extend(list_problems)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in list_images(root):
        try:
            person = person_id_of(path)
        except ValueError as e:
            logger.warning("skipping %s: %s", path, e)
            continue
        if split_of:
            split = split_of.get(path)
            if split is None:
                logger.warning("skipping %s: in neither %s", path, sorted(SPLIT_LIST_FILES.values()))
                continue
        else:
            split = hash_split(person, test_fraction)
        groups[(split, person)].append(path)
    for (split, _), paths in sorted(groups.items()):
        for target in paths:
            for source in paths:
                if source != target:
                    out.pairs.append(_make_pair(split, target, source, f"{IMAGE_DIR}/ tree: {target} <- {source}"))
    if not split_of:
        logger.info("no %s: split identities by hash (test fraction %.2f)", sorted(SPLIT_LIST_FILES.values()),
                    test_fraction)
    return _dedupe(out)


def read_pairs(root: str, layout: str = "auto", test_fraction: float = 0.2) -> PairsReadout:
    """Candidate pairs of a DeepFashion root in any supported layout (see module docstring)."""
    layout = detect_layout(root, layout)
    logger.info("reading pairs from %s (layout %s)", root, layout)
    if layout == "pidm":
        return read_pidm_pairs(root)
    if layout == "gfla":
        return read_gfla_pairs(root)
    return read_inshop_pairs(root, test_fraction)


# --------------------------------------------------------------------------------------------
# Annotation readers
# --------------------------------------------------------------------------------------------


def _keypoint_array(xs: list, ys: list, where: str) -> np.ndarray:
    """(18, 2) float32 from coordinate lists; ``ValueError`` naming ``where`` on a bad length/value."""
    if len(xs) != NUM_KEYPOINTS or len(ys) != NUM_KEYPOINTS:
        raise ValueError(f"{where}: expected {NUM_KEYPOINTS} keypoints, got {len(xs)} x and {len(ys)} y values")
    try:
        kps = np.stack([np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.float32)], axis=1)  # (18, 2)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: non-numeric keypoint value ({e})") from None
    if not np.isfinite(kps).all():
        raise ValueError(f"{where}: non-finite keypoint value")
    return kps


def read_gfla_annotations(root: str) -> tuple[dict[str, Annotation], list[Problem]]:
    """``fasion-resize-annotation-*.csv`` -> ``{image path: Annotation}`` and the rejected rows.

    A rejected row whose name is readable is keyed by that image path; otherwise by ``file:line``.
    """
    annotations: dict[str, Annotation] = {}
    problems: list[Problem] = []
    for fname in GFLA_ANNOTATION_FILES.values():
        if not _exists(root, fname):
            continue
        for lineno, line in enumerate(_read_text(root, fname).splitlines(), start=1):
            if not line.strip() or (lineno == 1 and line.replace(" ", "").startswith("name:")):
                continue
            where = f"{fname}:line {lineno}"
            fields = line.split(":")
            try:
                path = fashion_name_to_path(fields[0].strip())
            except ValueError as e:
                problems.append(Problem(where, f"{where}: {e}"))
                continue
            try:
                if len(fields) != 3:
                    raise ValueError(f"malformed row ({len(fields)} ':'-separated fields, expected 3)")
                kps = gfla_lists_to_kps(fields[1].strip(), fields[2].strip())  # (18, 2) in the 256x176 frame
                if not np.isfinite(kps).all():
                    raise ValueError("non-finite keypoint value")
            except ValueError as e:
                problems.append(Problem(path, f"{where}: annotation of {path}: {e}"))
                continue
            annotations.setdefault(path, Annotation(kps, "gfla", where))
    return annotations, problems


def read_pidm_annotation(root: str, image_path: str) -> Optional[Annotation]:
    """``pose/…/NN_V_view.txt`` of one image (None if the file does not exist).

    Raises ``ValueError`` naming the file if it is not an 18x2 table of numbers.
    """
    rel = pose_txt_path(image_path)
    try:
        text = _read_text(root, rel)
    except FileNotFoundError:
        return None
    try:
        rows = [[float(v) for v in line.replace(",", " ").split()] for line in text.splitlines() if line.strip()]
    except ValueError as e:
        raise ValueError(f"{rel}: non-numeric keypoint value ({e})") from None
    if len(rows) != NUM_KEYPOINTS or any(len(r) != 2 for r in rows):
        raise ValueError(f"{rel}: expected {NUM_KEYPOINTS} rows of 'x y', got {len(rows)} rows "
                         f"of {sorted({len(r) for r in rows})} values")
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    return Annotation(_keypoint_array(xs, ys, rel), "pidm", rel)


def annotation_to_image_frame(ann: Annotation, height: int, width: int) -> np.ndarray:
    """Keypoints of ``ann`` in the pixel frame of an image of ``height`` x ``width``.

    GFLA: ``x * W/176``, ``y * H/256``; PIDM: ``(x - 40) * W/176``, ``y * H/256`` (see
    :mod:`xmdpt.data.keypoints`). Missing stays -1.

    Returns:
        (18, 2) float32.
    """
    if ann.layout == "gfla":
        return scale_keypoints(ann.keypoints, GFLA_FRAME_HW, (height, width))
    return pidm_txt_to_image_frame(ann.keypoints, (height, width))
