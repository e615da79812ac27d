"""DeepFashion In-shop roots: the two public annotation layouts, the raw image tree, safe paths.

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

This module holds the names (fashion names, pose files, identities), the path checks, file access
and layout detection. The readers are :mod:`xmdpt.data.deepfashion_pairs` (candidate pairs),
:mod:`xmdpt.data.deepfashion_split` (train/test split of the raw tree) and
:mod:`xmdpt.data.deepfashion_annotations` (keypoints).

Every path handed out is POSIX, relative to the dataset root, and has gone through
:func:`safe_join`'s checks: nothing here ever reads outside the root. Readers never raise on a
bad row: they return it as a :class:`Problem` (row key + reason) and carry on.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass

from xmdpt.core.storage import filesystem, is_url

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
# Dataset access and layout detection
# --------------------------------------------------------------------------------------------


def file_exists(root: str, rel: str) -> bool:
    """Whether ``rel`` (checked by :func:`safe_join`) is a file under ``root``."""
    fs, path = filesystem(safe_join(root, rel))
    return fs.isfile(path)


def read_text(root: str, rel: str) -> str:
    """Text of a dataset file, decoded as UTF-8 (bad bytes replaced). ``FileNotFoundError`` if absent."""
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
    if any(file_exists(root, f) for f in PIDM_PAIR_FILES.values()):
        return "pidm"
    if any(file_exists(root, f) for f in GFLA_PAIR_FILES.values()):
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
