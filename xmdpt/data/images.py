"""Image decoding and the few resizes the pipeline does.

Every image that enters the pipeline goes through :func:`load_rgb`: it decodes the file **fully**
(PIL decodes lazily, so a truncated JPEG/PNG opens fine and only fails — or, with
``ImageFile.LOAD_TRUNCATED_IMAGES``, silently pads with grey — when the pixels are read), applies
the EXIF orientation, and converts every mode (grayscale, RGBA/LA/P with transparency composited on
white, CMYK, 16-bit) to 8-bit RGB. Failures raise :class:`ImageError` naming the image and the reason.

The authors squash DeepFashion's 256x176 (H x W) images to a 256x256 square with a bicubic resize
(PAPER.md §2.3); :func:`resize_square` does the same with PIL's antialiased bicubic filter.
"""

from __future__ import annotations

import io
import logging
import os
from typing import TYPE_CHECKING, BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["ImageError", "load_rgb", "resize_square", "to_tensor"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

# modes whose alpha channel (or palette transparency) is composited on white
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"


class ImageError(ValueError):
    """An image cannot be decoded or has an unusable shape; the message names the image and the reason."""


def _read(source: ImageSource, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ImageError(f"{name}: file not found ({os.fspath(source)})")
        with open(source, "rb") as f:  # read once: the decoder never keeps a file handle open
            data = f.read()
    else:
        data = source.read()
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return data


def _check_complete(data: bytes, name: str) -> None:
    """Truncation PIL does not see: a PNG whose pixel data is complete but whose IEND chunk is cut off."""
    if data.startswith(_PNG_MAGIC) and _PNG_IEND not in data[-64:]:
        raise ImageError(f"{name}: cannot decode image (PNG truncated: no IEND chunk at the end)")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / int / float grayscale: rescale the actual range to 0..255
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).round().astype(np.uint8))
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def load_rgb(source: ImageSource, *, name: str) -> np.ndarray:
    """Decode a JPEG/PNG (or any PIL format) completely into an RGB array.

    Args:
        source: a path, the encoded bytes, or a binary file object (read to its end).
        name: how the image is called in error messages (its dataset-relative path, a row key).

    Returns:
        ``uint8 (H, W, 3)`` RGB.

    Raises:
        ImageError: the file is missing, empty, not an image, truncated or corrupt. (Garbage inside
            JPEG entropy-coded data that libjpeg decodes without error cannot be detected.)
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # someone switched PIL to padding truncated files with grey: that would hide corrupt data
        raise ImageError(f"{name}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode "
                         "(truncated files would be padded silently)")
    data = _read(source, name)
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        img.load()  # full decode: truncation and corrupt data raise here, not later
        _check_complete(data, name)
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a recognised image file (unknown format or corrupt header, "
                         f"{len(data)} bytes starting {data[:8]!r})") from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{name}: decoded to an unusable shape {arr.shape} (format {fmt})")
    return np.ascontiguousarray(arr)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Squash an image to ``size x size`` (bicubic, antialiased), as the authors do for 256x176 -> 256x256.

    Args:
        img: ``uint8 (H, W, 3)``.
        size: output side.

    Returns:
        ``uint8 (size, size, 3)``.
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"resize_square: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
    if size <= 0:
        raise ValueError(f"resize_square: size must be positive, got {size}")
    if img.shape[:2] == (size, size):
        return img.copy()
    # PIL's resize widens the filter support when downscaling: that is the antialiasing
    out = Image.fromarray(img).resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8)


def to_tensor(img: np.ndarray) -> "torch.Tensor":
    """``uint8 (H, W, 3)`` -> ``float32 (3, H, W)`` in ``[-1, 1]`` (the authors' Normalize(0.5, 0.5))."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"to_tensor: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
    import torch  # lazy: image decoding in Ray workers should not pay for importing torch

    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()  # (3, H, W)
    return x / 127.5 - 1.0
