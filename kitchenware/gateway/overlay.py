"""Draw a Grad-CAM map over the photo it explains, as a PNG: Pillow and numpy only.

The model saw the whole photo squeezed into a square (kitchenware.core.images),
so the map's grid covers the whole photo. The overlay is drawn on those same
square pixels (no second decode of the upload) and then stretched back to the
photo's own aspect ratio, which puts every cell back over the region it
describes. The map is shown as a colour
ramp (transparent blue for 0 through red for 1) blended over a dimmed copy of
the photo; the blend's opacity grows with the map's value, so unimportant
regions keep showing the photo.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Longest side of the overlay: enough to see the regions, small enough for JSON.
MAX_OVERLAY_SIDE = 384
# zlib level of the PNG: 1 encodes a 384-px overlay of a photo in ~8 ms (level 6,
# Pillow's default: ~29 ms) for a file ~25 % larger.
PNG_COMPRESS_LEVEL = 1
# Opacity of the colour where the map is 1 (0 where it is 0).
MAX_ALPHA = 0.6
# Colour ramp stops (value, RGB): blue -> cyan -> yellow -> red.
_RAMP = np.array(
    [
        (0.0, 0, 0, 255),
        (0.35, 0, 255, 255),
        (0.7, 255, 255, 0),
        (1.0, 255, 0, 0),
    ],
    dtype=np.float32,
)


def colour(values: np.ndarray) -> np.ndarray:
    """RGB float [.., 3] for map values in [0, 1] (linear between the ramp's stops)."""
    values = np.clip(values, 0.0, 1.0)
    channels = [np.interp(values, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1)


def photo_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded photo as displayed, i.e. after its EXIF rotation."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        if img.getexif().get(EXIF_ORIENTATION) in ROTATED:
            return height, width
        return width, height


EXIF_ORIENTATION = 0x0112
ROTATED = (5, 6, 7, 8)  # orientations that turn the picture by 90 degrees


def overlay(
    pixels: np.ndarray,
    heatmap: np.ndarray,
    size: tuple[int, int] | None = None,
    max_side: int = MAX_OVERLAY_SIDE,
) -> Image.Image:
    """The model's input `pixels` [S, S, 3] at the photo's (width, height) `size` (scaled to
    at most `max_side`), with `heatmap` [H, W] in [0, 1] blended over it."""
    grid = np.asarray(heatmap, dtype=np.float32)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D grid, got shape {list(grid.shape)}")
    if not np.all(np.isfinite(grid)):
        raise ValueError("heatmap holds NaN or infinite values")
    photo = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    width, height = size or photo.size
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    base = np.asarray(photo.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    # Stretch the grid to the photo with a smooth (bilinear) resize of its float values.
    smooth = Image.fromarray(np.clip(grid, 0.0, 1.0)).resize(size, Image.Resampling.BILINEAR)
    values = np.asarray(smooth, dtype=np.float32)[..., np.newaxis]
    alpha = MAX_ALPHA * values
    blended = base * 0.85 * (1 - alpha) + colour(values[..., 0]) * alpha
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def overlay_png(
    pixels: np.ndarray,
    heatmap: np.ndarray,
    size: tuple[int, int] | None = None,
    max_side: int = MAX_OVERLAY_SIDE,
) -> bytes:
    """`overlay(...)` encoded as PNG."""
    buffer = io.BytesIO()
    image = overlay(pixels, heatmap, size, max_side)
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
