"""The one definition of how an image is read: bytes or path -> RGB uint8 array.

`prep`, the training input pipeline, evaluation, submission and the gateway all
call `load_image`, so every stage sees the same pixels for the same file:
EXIF orientation applied, any mode converted to RGB, transparency flattened
onto white, and (when `size` is given) a square resize with bilinear filtering.
The pixel count is checked from the header before any pixel is decoded, which
stops decompression bombs cheaply.

A file of a few bytes can still declare a canvas of 40 megapixels (a GIF
screen, a WebP animation canvas, a palette PNG), so two more rules bound what
decoding takes: the memory a decode will need is estimated from the header and
refused past `max_decode_bytes`, and after decoding nothing full-size is copied
again: conversion to RGB runs a strip of rows at a time, and with `size` each
strip is box-reduced by the integer factor that keeps at least `size` pixels
(what JPEG's draft mode does inside the decoder).
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
# Rows converted to RGB at a time: a few MB per strip even 6,000 pixels wide.
STRIP_ROWS = 256
# Greyscale modes wider than 8 bits: scaled by their real range, not clipped.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Bytes per pixel of a decoded frame in Pillow; every mode not listed takes 4.
_FRAME_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# What a decoder holds beside the frame, per pixel (measured peaks, scripts in
# docu/RELIABILITY.md): libwebp decodes into buffers of its own, still or animated
# (~16 bytes a pixel in all); PNG/GIF/TIFF/BMP keep row and zlib buffers.
_DECODER_BYTES = {"JPEG": 0.0, "WEBP": 12.0}
_OTHER_DECODER_BYTES = 1.5

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


def _to_rgb(img: Image.Image, extrema: tuple[float, float] | None = None) -> Image.Image:
    """Any Pillow mode -> RGB; transparency composited onto white.

    `extrema` is the value range of a wide greyscale image when `img` is only
    a strip of it (the scaling must not depend on which strip it is).
    """
    if img.mode == "RGB":
        return img
    if img.mode in WIDE_MODES:
        lo, hi = extrema if extrema is not None else img.getextrema()
        arr = np.asarray(img, dtype=np.float32)
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def reduction_factor(width: int, height: int, size: int | None) -> int:
    """The largest integer factor that keeps the short side at least `size` (1 without one)."""
    return max(1, min(width, height) // size) if size else 1


def _rgb_reduced(img: Image.Image, factor: int) -> Image.Image:
    """`_to_rgb(img).reduce(factor)`, without the full-size intermediate copies.

    Both steps are local (per pixel, per factor x factor block), so strips whose
    height is a multiple of `factor` give exactly the same pixels as the whole
    image, with memory bounded by one strip beside the decoded frame.
    """
    if factor == 1 and img.mode == "RGB":
        return img
    width, height = img.size
    extrema = img.getextrema() if img.mode in WIDE_MODES else None
    rows = max(factor, STRIP_ROWS // factor * factor)
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = _to_rgb(img.crop((0, top, width, min(height, top + rows))), extrema)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return out


def _may_rotate(img: Image.Image) -> bool:
    """Whether EXIF may ask for a rotation, read without decoding any pixels.

    Only a JPEG's EXIF sits in its header (Pillow's PNG `getexif` decodes the
    whole image first); elsewhere any EXIF block counts as a rotation.
    """
    if img.format != "JPEG":
        return "exif" in img.info
    try:
        return img.getexif().get(0x0112, 1) != 1
    except Exception:  # a damaged EXIF block: assume the costly case, decoding will tell
        return True


def decode_bytes(img: Image.Image, size: int | None = None) -> int:
    """Memory `load_image` will need for an opened (not yet loaded) image, from its header.

    The decoded frame, a second one when EXIF asks for a rotation, and the RGB
    result (full size without `size`, plus the array returned).
    """
    width, height = img.size
    pixels = width * height
    frame = pixels * _FRAME_BYTES.get(img.mode, 4)
    decoder = pixels * _DECODER_BYTES.get(img.format, _OTHER_DECODER_BYTES)
    if _may_rotate(img):
        frame *= 2  # the transposed copy
    factor = reduction_factor(width, height, size)
    result = -(-width // factor) * -(-height // factor) * (4 + 3)
    return int(frame + decoder + result)


def decode_estimate(source: ImageSource, size: int | None = None) -> int:
    """What `load_image(source, size)` will need, in bytes, read from the header only."""
    with _open(source) as img:
        try:
            if size is not None and img.format == "JPEG":
                img.draft("RGB", (size, size))
            return decode_bytes(img, size)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError(f"cannot read image: {exc}") from exc


def image_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) from the header only; raises ImageError if unreadable."""
    with _open(source) as img:
        return img.size


def load_image(
    source: ImageSource,
    size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int | None = None,
) -> np.ndarray:
    """Decode `source` into an (H, W, 3) uint8 RGB array.

    With `size`, the result is (size, size, 3): JPEGs are first decoded at the
    smallest power-of-two reduction that is still at least `size` on both
    sides (draft mode, several times faster for large photos), then resized.
    Other formats are box-reduced by the integer factor that still keeps `size`
    (see the module's docstring), then resized. Raises ImageTooLarge when the
    header declares more than `max_pixels` pixels or a decode that would take
    more than `max_decode_bytes`, ImageError for anything not a decodable image.
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
        # The estimate only when asked: offline callers decode their own files unbounded.
        if max_decode_bytes is not None and (needed := decode_bytes(img, size)) > max_decode_bytes:
            raise ImageTooLarge(
                f"decoding this {width}x{height} {img.format} ({img.mode}) would take "
                f"~{needed / 2**20:,.0f} MiB; the limit is {max_decode_bytes / 2**20:,.0f} MiB"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                raise ImageError(f"cannot decode image: {exc}") from exc
        img = _rgb_reduced(img, reduction_factor(*img.size, size))
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
