"""The one definition of how an image is read: bytes or path -> RGB uint8 array.

`prep`, the training input pipeline, evaluation, submission and the gateway all
call `load_image`, so every stage sees the same pixels for the same file:
EXIF orientation applied, any mode converted to RGB, transparency flattened
onto white, and (when `size` is given) a square resize with bilinear filtering.
The pixel count is checked from the header before any pixel is decoded, which
stops decompression bombs cheaply.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kitchenware.core.errors import ImageError, ImageTooLarge

# 40 megapixels: above any phone camera, far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 40_000_000
RESAMPLE = Image.Resampling.BILINEAR

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO

# Photo formats we decode. Everything else Pillow could open (EPS hands the file
# to Ghostscript, PSD, ICO, exotic TIFF codecs, ...) is refused as "not an
# image": the gateway decodes bytes from strangers. (Pillow's JPEG opener also
# covers MPO, the multi-picture JPEG some cameras write.)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("empty file (0 bytes)")
        fp: BinaryIO | str | os.PathLike = io.BytesIO(bytes(source))
    else:
        fp = source
        if isinstance(source, (str, os.PathLike)) and Path(source).stat().st_size == 0:
            raise ImageError(f"empty file (0 bytes): {source}")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past twice its limit raises) about huge images;
            # load_image applies its own, lower, max_pixels right after opening.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image is too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a recognised image format (accepted: {', '.join(FORMATS)})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot read image: {exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale: scale the real range to 0..255 instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) from the header only; raises ImageError if unreadable."""
    with _open(source) as img:
        return img.size


def load_image(
    source: ImageSource,
    size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode `source` into an (H, W, 3) uint8 RGB array.

    With `size`, the result is (size, size, 3): JPEGs are first decoded at the
    smallest power-of-two reduction that is still at least `size` on both
    sides (draft mode, several times faster for large photos), then resized.
    Raises ImageTooLarge when the header declares more than `max_pixels`
    pixels, ImageError for anything that is not a decodable image.
    """
    img = _open(source)
    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(f"invalid image dimensions {width}x{height}")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height:,} pixels; "
                f"the limit is {max_pixels:,}"
            )
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (size, size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img.load()
                img = ImageOps.exif_transpose(img)
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                raise ImageError(f"cannot decode image: {exc}") from exc
        img = _to_rgb(img)
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), RESAMPLE)
        return np.asarray(img, dtype=np.uint8).copy()
    finally:
        img.close()


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 array -> JPEG bytes (sample data, warm-up requests, tests)."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
