"""Image decoding: full decode, clear errors for bad files, every mode to RGB, resize, tensor range."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from xmdpt.data.images import ImageError, load_rgb, resize_square, to_tensor


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A smooth 64x48 RGB image (so JPEG keeps it close)."""
    yy, xx = np.mgrid[0:64, 0:48]
    return np.stack([yy * 4, xx * 5, 255 - yy * 3], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decodes_from_bytes_and_path(tmp_path, photo, fmt):
    data = _encode(Image.fromarray(photo), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    img = load_rgb(data, name="x")
    assert img.shape == (64, 48, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - photo).mean() < (3 if fmt == "JPEG" else 1e-9)
    p = tmp_path / f"a.{fmt.lower()}"
    p.write_bytes(data)
    np.testing.assert_array_equal(load_rgb(p, name="a"), img)
    with open(p, "rb") as f:
        np.testing.assert_array_equal(load_rgb(f, name="a"), img)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9, "all-but-2", "all-but-12"])
def test_truncated_files_raise_naming_the_image(photo, fmt, keep):
    data = _encode(Image.fromarray(photo), fmt)
    n = {"all-but-2": len(data) - 2, "all-but-12": len(data) - 12}.get(keep) or int(len(data) * keep)
    with pytest.raises(ImageError, match=r"(?i)img/MEN/x\.jpg: .*truncated"):
        load_rgb(data[:n], name="img/MEN/x.jpg")


def test_corrupt_files_raise(photo):
    jpg = bytearray(_encode(Image.fromarray(photo), "JPEG"))
    jpg[20:36] = b"\x13" * 16  # inside the header segments
    with pytest.raises(ImageError, match="bad.jpg: cannot decode"):
        load_rgb(bytes(jpg), name="bad.jpg")
    png = bytearray(_encode(Image.fromarray(photo), "PNG"))
    png[len(png) // 2:len(png) // 2 + 64] = b"\x00" * 64  # inside the zlib stream
    with pytest.raises(ImageError, match="bad.png: cannot decode"):
        load_rgb(bytes(png), name="bad.png")
    with pytest.raises(ImageError, match="noise: not a recognised image"):
        load_rgb(np.random.default_rng(0).integers(0, 255, 500, dtype=np.uint8).tobytes(), name="noise")
    with pytest.raises(ImageError, match="empty: empty file"):
        load_rgb(b"", name="empty")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="gone.jpg: file not found"):
        load_rgb(tmp_path / "gone.jpg", name="gone.jpg")


def test_grayscale_becomes_rgb(photo):
    gray = Image.fromarray(photo).convert("L")
    for data in (_encode(gray, "PNG"), _encode(gray, "JPEG", quality=95)):
        img = load_rgb(data, name="g")
        assert img.shape == (64, 48, 3)
        np.testing.assert_array_equal(img[..., 0], img[..., 1])
        np.testing.assert_array_equal(img[..., 1], img[..., 2])


def test_16bit_grayscale_png_is_rescaled():
    arr = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 20).astype(np.uint16)  # 0 .. 61420
    img = load_rgb(_encode(Image.fromarray(arr), "PNG"), name="g16")
    assert img.dtype == np.uint8 and img.shape == (64, 48, 3)
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255


def test_rgba_and_la_are_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent -> white
    rgba[0, 2] = (0, 0, 0, 128)  # half black -> mid grey
    img = load_rgb(_encode(Image.fromarray(rgba), "PNG"), name="rgba")
    np.testing.assert_array_equal(img[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(img[0, 1], [255, 255, 255])
    assert np.all(np.abs(img[0, 2].astype(int) - 127) <= 2)
    la = Image.fromarray(np.stack([np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)], -1), mode="LA")
    np.testing.assert_array_equal(load_rgb(_encode(la, "PNG"), name="la")[0, 0], [255, 255, 255])


def test_palette_with_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30] + [200, 100, 50] * 255)
    p.putpixel((1, 1), 1)
    img = load_rgb(_encode(p, "PNG", transparency=0), name="pal")
    np.testing.assert_array_equal(img[0, 0], [255, 255, 255])  # transparent index
    np.testing.assert_array_equal(img[1, 1], [200, 100, 50])


def test_cmyk_jpeg_becomes_rgb(photo):
    cmyk = Image.fromarray(photo).convert("CMYK")
    img = load_rgb(_encode(cmyk, "JPEG", quality=95), name="cmyk")
    assert img.shape == (64, 48, 3)
    assert np.abs(img.astype(int) - photo).mean() < 6


def test_resize_square_is_antialiased_bicubic():
    checker = ((np.indices((256, 176)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.repeat(checker[..., None], 3, axis=-1)
    out = resize_square(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # antialiasing averages the 1-px checkerboard to grey; point sampling would keep 0/255
    assert abs(out.mean() - 127.5) < 3 and out.std() < 10
    assert resize_square(img, 256).shape == (256, 256, 3)
    with pytest.raises(ValueError, match="uint8"):
        resize_square(img.astype(np.float32), 64)


def test_to_tensor_range_and_layout():
    img = np.zeros((5, 7, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 128)
    x = to_tensor(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert x[0, 0, 0] == 1.0 and x[1, 0, 0] == -1.0 and abs(float(x[2, 0, 0]) - 0.0039) < 1e-3
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
