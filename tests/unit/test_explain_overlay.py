"""The /explain overlay (Pillow + numpy) and where `test.py --explain` saves it."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from kitchenware.core.errors import KitchenwareError
from kitchenware.gateway.overlay import overlay, overlay_png, photo_size
from kitchenware.serving.gateway_client import overlay_path, save_overlay


def grey(size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), 128, np.uint8)


def test_the_overlay_is_red_where_the_map_is_hot_and_the_photo_where_it_is_cold():
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[0, 3] = 1.0  # top right cell
    drawn = np.asarray(overlay(grey(), heatmap, size=(200, 100)), float)
    assert drawn.shape == (100, 200, 3)  # the photo's own aspect ratio, not the square
    hot, cold = drawn[5:15, 180:195], drawn[80:95, 5:20]
    assert hot[..., 0].mean() > 180 and hot[..., 0].mean() > hot[..., 2].mean() + 60
    assert np.allclose(cold, cold.mean(axis=(0, 1)), atol=2)  # plain (dimmed) photo
    assert abs(cold.mean() - 128 * 0.85) < 3


def test_the_overlay_is_a_png_capped_at_the_longest_side():
    png = overlay_png(grey(), np.random.default_rng(0).random((10, 10)), size=(3000, 2000))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (384, 256)


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros(5), np.full((2, 2), np.nan)])
def test_an_unusable_map_is_refused(bad):
    with pytest.raises(ValueError):
        overlay(grey(), bad)


def test_photo_size_follows_the_exif_rotation():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(buffer, format="JPEG", exif=exif.tobytes())
    assert photo_size(buffer.getvalue()) == (30, 40)


def test_overlays_are_saved_beside_files_and_named_after_urls(tmp_path, monkeypatch):
    assert overlay_path(str(tmp_path / "mug.jpg")) == tmp_path / "mug.explain.png"
    assert overlay_path("https://example.com/a/b/fork%201.JPG?x=1").name == "fork_1.explain.png"
    answer = {"explanation": {"overlay_png": base64.b64encode(b"\x89PNG...").decode()}}
    assert save_overlay(str(tmp_path / "mug.jpg"), answer).read_bytes() == b"\x89PNG..."
    with pytest.raises(KitchenwareError, match="no overlay PNG"):
        save_overlay(str(tmp_path / "mug.jpg"), {"label": "cup"})
