"""Drawing primitives for synthetic kitchenware "photos": Pillow shapes, not photos.

One function per class draws its silhouette (the shapes `synthetic` describes);
`draw_photo` puts it on a table-like background with a shadow, lighting, noise
and sometimes blur, and `encode_photo` stores it as a camera would (JPEG, at
times with an EXIF rotation). Everything random comes from the caller's
generator, so one seed gives one picture. `synthetic` builds the data set.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kitchenware.core.errors import KitchenwareError

# --------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float, alpha: int = 255) -> tuple[int, int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(r * 255), int(g * 255), int(b * 255), alpha)


def _shade(color: tuple, factor: float) -> tuple[int, int, int, int]:
    r, g, b, a = color
    return (
        int(min(255, r * factor)),
        int(min(255, g * factor)),
        int(min(255, b * factor)),
        a,
    )


def _object_color(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Ceramic white/cream half the time, otherwise any saturated colour."""
    if rng.random() < 0.4:
        return _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0))
    return _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.45, 0.95))


def _metal_color(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Stainless steel most of the time, coloured plastic sometimes."""
    if rng.random() < 0.8:
        grey = rng.uniform(0.55, 0.85)
        return _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.08), grey)
    return _hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9))


# --------------------------------------------------------------------------- shapes
# Each draws one upright object centred in an S x S transparent layer and stays
# inside the circle of radius ~0.47 S, so any rotation keeps it whole.


def _draw_cup(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    color = _object_color(rng)
    bw, bh = s * rng.uniform(0.30, 0.42), s * rng.uniform(0.32, 0.46)
    taper = bw * rng.uniform(0.0, 0.12)
    cx, cy = s / 2 - bw * 0.12, s / 2
    top, bottom = cy - bh / 2, cy + bh / 2
    left, right = cx - bw / 2, cx + bw / 2
    # Handle: a thick ring on the right; the body covers its inner half.
    rx, ry = bw * rng.uniform(0.22, 0.32), bh * rng.uniform(0.24, 0.34)
    hy = cy - bh * rng.uniform(-0.05, 0.12)
    ring = max(2, int(s * rng.uniform(0.025, 0.045)))
    d.ellipse((right - rx, hy - ry, right + rx, hy + ry), outline=color, width=ring)
    d.polygon(
        [(left, top), (right, top), (right - taper, bottom), (left + taper, bottom)], fill=color
    )
    foot = bw * 0.08
    d.ellipse((left + taper, bottom - foot, right - taper, bottom + foot), fill=color)
    rim = bw * rng.uniform(0.10, 0.18)
    d.ellipse((left, top - rim, right, top + rim), fill=_shade(color, 0.55))
    d.ellipse((left, top - rim, right, top + rim), outline=_shade(color, 1.2), width=2)
    # A vertical highlight gives the body some roundness.
    hx = left + bw * rng.uniform(0.15, 0.3)
    d.rectangle((hx, top + rim, hx + bw * 0.06, bottom - foot), fill=_shade(color, 1.25))


def _draw_glass(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    tint = _hsv(rng.uniform(0.45, 0.65), rng.uniform(0.0, 0.25), rng.uniform(0.85, 1.0))
    fill = tint[:3] + (int(rng.uniform(60, 120)),)
    edge = _shade(tint, 0.7)[:3] + (int(rng.uniform(170, 240)),)
    width = max(2, int(s * 0.012))
    cx, cy = s / 2, s / 2
    if rng.random() < 0.35:  # wine glass: bowl, stem, foot
        bw, bh = s * rng.uniform(0.22, 0.32), s * rng.uniform(0.28, 0.36)
        stem = s * rng.uniform(0.20, 0.28)
        top = cy - (bh + stem) / 2
        d.chord(
            (cx - bw / 2, top - bh, cx + bw / 2, top + bh),
            0,
            180,
            fill=fill,
            outline=edge,
            width=width,
        )
        d.line((cx, top + bh, cx, top + bh + stem), fill=edge, width=max(2, int(s * 0.02)))
        fw = bw * rng.uniform(0.6, 0.9)
        base = top + bh + stem
        d.ellipse((cx - fw / 2, base - s * 0.02, cx + fw / 2, base + s * 0.02), fill=edge)
        d.line((cx - bw / 2, top, cx + bw / 2, top), fill=edge, width=width)
        return
    tw, gh = s * rng.uniform(0.26, 0.38), s * rng.uniform(0.55, 0.72)
    bw = tw * rng.uniform(0.65, 0.9)
    top, bottom = cy - gh / 2, cy + gh / 2
    outline = [(cx - tw / 2, top), (cx + tw / 2, top), (cx + bw / 2, bottom), (cx - bw / 2, bottom)]
    d.polygon(outline, fill=fill)
    if rng.random() < 0.4:  # some liquid in the lower part
        level = rng.uniform(0.3, 0.7)
        ly = bottom - gh * level
        lw = bw + (tw - bw) * level
        liquid = _hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.9), 150)
        d.polygon(
            [(cx - lw / 2, ly), (cx + lw / 2, ly), (cx + bw / 2, bottom), (cx - bw / 2, bottom)],
            fill=liquid,
        )
    d.line(outline + [outline[0]], fill=edge, width=width)
    rim = tw * 0.12
    d.ellipse((cx - tw / 2, top - rim, cx + tw / 2, top + rim), outline=edge, width=width)
    hx = cx - tw * 0.3
    d.line(
        (hx, top + rim * 2, hx + (tw - bw) * 0.15, bottom - gh * 0.1),
        fill=(255, 255, 255, 200),
        width=max(2, int(s * 0.015)),
    )


def _draw_plate(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    color = _object_color(rng)
    pw = s * rng.uniform(0.75, 0.92)
    ph = pw * rng.uniform(0.45, 1.0)
    cx, cy = s / 2, s / 2
    box = (cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2)
    d.ellipse(box, fill=color, outline=_shade(color, 0.7), width=max(2, int(s * 0.01)))
    inner = rng.uniform(0.6, 0.75)
    d.ellipse(
        (cx - pw * inner / 2, cy - ph * inner / 2, cx + pw * inner / 2, cy + ph * inner / 2),
        fill=_shade(color, rng.uniform(0.85, 0.95)),
        outline=_shade(color, 0.75),
        width=max(1, int(s * 0.006)),
    )
    if rng.random() < 0.3:  # a decorated rim
        band = _hsv(rng.random(), 0.7, 0.7)
        k = (1 + inner) / 2
        d.ellipse(
            (cx - pw * k / 2, cy - ph * k / 2, cx + pw * k / 2, cy + ph * k / 2),
            outline=band,
            width=max(2, int(s * 0.012)),
        )


def _handle(d, s, rng, color, top: float, bottom: float) -> None:
    """Tapered cutlery handle from `top` (thin) to `bottom` (wide, rounded end)."""
    cx = s / 2
    w1, w2 = s * rng.uniform(0.018, 0.028), s * rng.uniform(0.032, 0.05)
    d.polygon([(cx - w1, top), (cx + w1, top), (cx + w2, bottom), (cx - w2, bottom)], fill=color)
    d.ellipse((cx - w2, bottom - w2, cx + w2, bottom + w2), fill=color)
    d.line(
        (cx - w1 * 0.3, top + s * 0.02, cx - w2 * 0.3, bottom - s * 0.02),
        fill=_shade(color, 1.3),
        width=max(1, int(s * 0.006)),
    )


def _cutlery_span(s: int, rng: np.random.Generator) -> tuple[float, float, float]:
    length = s * rng.uniform(0.74, 0.88)
    return length, s / 2 - length / 2, s / 2 + length / 2


def _draw_spoon(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    color = _metal_color(rng)
    length, top, bottom = _cutlery_span(s, rng)
    bw = s * rng.uniform(0.11, 0.17)
    bh = bw * rng.uniform(1.3, 1.75)
    cx = s / 2
    _handle(d, s, rng, color, top + bh * 0.9, bottom - s * 0.04)
    d.ellipse(
        (cx - bw / 2, top, cx + bw / 2, top + bh),
        fill=color,
        outline=_shade(color, 0.7),
        width=max(1, int(s * 0.006)),
    )
    d.ellipse(
        (cx - bw * 0.3, top + bh * 0.15, cx + bw * 0.15, top + bh * 0.7), fill=_shade(color, 1.2)
    )


def _draw_fork(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    color = _metal_color(rng)
    length, top, bottom = _cutlery_span(s, rng)
    cx = s / 2
    fw = s * rng.uniform(0.10, 0.15)
    tines = int(rng.integers(3, 5))
    tine_len = length * rng.uniform(0.18, 0.26)
    head = fw * rng.uniform(0.45, 0.7)
    gap = fw / (2 * tines - 1)
    for i in range(tines):
        x0 = cx - fw / 2 + 2 * i * gap
        d.rectangle((x0, top, x0 + gap, top + tine_len + 1), fill=color)
    neck = s * 0.025
    d.polygon(
        [
            (cx - fw / 2, top + tine_len),
            (cx + fw / 2, top + tine_len),
            (cx + neck, top + tine_len + head),
            (cx - neck, top + tine_len + head),
        ],
        fill=color,
    )
    _handle(d, s, rng, color, top + tine_len + head, bottom - s * 0.04)


def _draw_knife(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    blade = _metal_color(rng)
    length, top, bottom = _cutlery_span(s, rng)
    cx = s / 2
    bl = length * rng.uniform(0.5, 0.6)
    bw = s * rng.uniform(0.055, 0.085)
    edge = cx - bw / 2
    # Straight spine on the left, curved cutting edge rising to the tip.
    curve = [(edge + bw * (1 - t**2), top + bl * 0.35 * (1 - t)) for t in np.linspace(0, 1, 8)]
    d.polygon([(edge, top), *curve[::-1], (edge + bw, top + bl), (edge, top + bl)], fill=blade)
    d.line(
        (edge + bw * 0.25, top + bl * 0.3, edge + bw * 0.25, top + bl * 0.95),
        fill=_shade(blade, 1.25),
        width=max(1, int(s * 0.006)),
    )
    if rng.random() < 0.6:  # wooden or black handle with rivets
        grip = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.4, 0.8), rng.uniform(0.15, 0.5))
    else:
        grip = blade
    hw = bw * rng.uniform(0.55, 0.75)
    d.rectangle(
        (edge - bw * 0.1, top + bl, edge + bw * 1.1, top + bl + s * 0.02), fill=_shade(blade, 0.8)
    )
    hx = edge + bw / 2
    d.rounded_rectangle((hx - hw, top + bl + s * 0.02, hx + hw, bottom), radius=hw * 0.8, fill=grip)
    if grip is not blade:
        for k in (0.25, 0.5, 0.75):
            ry = top + bl + s * 0.02 + (bottom - top - bl) * k
            r = max(1, s * 0.008)
            d.ellipse((hx - r, ry - r, hx + r, ry + r), fill=(200, 200, 200, 255))


DRAWERS = {
    "cup": _draw_cup,
    "glass": _draw_glass,
    "plate": _draw_plate,
    "spoon": _draw_spoon,
    "fork": _draw_fork,
    "knife": _draw_knife,
}
# Cups and glasses stand (small tilt); the rest lie on the table at any angle.
UPRIGHT = {"cup", "glass"}


# --------------------------------------------------------------------------- scene


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = np.array(
        _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.35, 0.95))[:3], dtype=np.float32
    )
    img = np.broadcast_to(base, (height, width, 3)).copy()
    kind = rng.integers(0, 3)
    if kind == 1:  # wood-like grain
        y = np.arange(height, dtype=np.float32)[:, None]
        x = np.arange(width, dtype=np.float32)[None, :]
        freq = rng.uniform(0.02, 0.08) * 256 / max(width, 1)
        grain = np.sin(y * freq * 4 + 3 * np.sin(x * freq * 0.3 + rng.uniform(0, 6)))
        img += (grain * rng.uniform(6, 18))[..., None]
    elif kind == 2:  # a table edge: two surfaces
        other = np.array(
            _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.3, 0.9))[:3], dtype=np.float32
        )
        cut = int(height * rng.uniform(0.05, 0.3))
        img[:cut] = other
    return img


def _lighting(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi)
    y = (np.arange(height, dtype=np.float32)[:, None] - height / 2) / max(width, height)
    x = (np.arange(width, dtype=np.float32)[None, :] - width / 2) / max(width, height)
    plane = 1.0 + rng.uniform(0.2, 0.6) * (x * np.cos(theta) + y * np.sin(theta))
    return (plane * rng.uniform(0.8, 1.15))[..., None]


# Scenes are drawn at most this wide and scaled up: a 1000x750 "photo" then
# costs little more than a 640x480 one (the benchmark draws thousands).
MAX_SCENE_SIDE = 640


# With off_centre, the object's square layer is this share of the shorter side and
# sits wholly inside one quadrant of the photo, so its centre is never the photo's.
OFF_CENTRE_SIDE = (0.32, 0.48)


def draw_photo(label: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One synthetic 'photo' of `label` as an (height, width, 3) uint8 array."""
    return draw_photo_boxed(label, rng, width, height)[0]


def draw_photo_boxed(
    label: str, rng: np.random.Generator, width: int, height: int, off_centre: bool = False
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """draw_photo, and the object's bounding box (x0, y0, x1, y1) as fractions of the
    photo's width and height (the box of its opaque pixels, after rotation)."""
    if label not in DRAWERS:
        raise KitchenwareError(f"no drawing for label {label!r}")
    scale = min(1.0, MAX_SCENE_SIDE / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    scene, box = _draw_scene(label, rng, w, h, off_centre)
    if scene.size != (width, height):
        scene = scene.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(scene, dtype=np.float32)
    pixels = pixels * _lighting(rng, width, height)
    pixels += rng.normal(0.0, rng.uniform(2, 7), size=pixels.shape).astype(np.float32)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.3:  # camera slightly out of focus
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
    return np.asarray(img), box


def _draw_scene(
    label: str, rng: np.random.Generator, width: int, height: int, off_centre: bool = False
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Background, shadow and the object, before lighting and sensor noise; and the box."""
    share = rng.uniform(*OFF_CENTRE_SIDE) if off_centre else rng.uniform(0.7, 1.0)
    side = int(min(width, height) * share)
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    DRAWERS[label](ImageDraw.Draw(layer), side, rng)
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = rng.uniform(-18, 18) if label in UPRIGHT else rng.uniform(0, 360)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC)
    if off_centre:
        right, lower = (bool(b) for b in rng.integers(0, 2, size=2))
        x = int(rng.integers(0, max(1, width // 2 - side + 1))) + (width // 2 if right else 0)
        y = int(rng.integers(0, max(1, height // 2 - side + 1))) + (height // 2 if lower else 0)
        x, y = min(x, width - side), min(y, height - side)
    else:
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    x0, y0, x1, y1 = layer.getchannel("A").point(lambda a: 255 if a > 64 else 0).getbbox() or (
        0, 0, side, side
    )  # fmt: skip
    box = ((x + x0) / width, (y + y0) / height, (x + x1) / width, (y + y1) / height)

    canvas = Image.fromarray(
        np.clip(_background(rng, width, height), 0, 255).astype(np.uint8), "RGB"
    ).convert("RGBA")
    # Soft shadow: the object's own silhouette, blurred and offset.
    alpha = layer.getchannel("A").filter(ImageFilter.GaussianBlur(max(1, side * 0.02)))
    shadow = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    shadow.putalpha(alpha.point(lambda a: int(a * 0.35)))
    dx, dy = (int(v) for v in rng.integers(2, max(3, side // 25), size=2))
    canvas.alpha_composite(shadow, dest=(min(x + dx, width - side), min(y + dy, height - side)))
    canvas.alpha_composite(layer, dest=(x, y))
    return canvas.convert("RGB"), box


def encode_photo(pixels: np.ndarray, quality: int, exif_rotate: bool = False) -> bytes:
    """JPEG bytes; with `exif_rotate` the pixels are stored turned and an EXIF
    Orientation tag (6) says how to turn them back, as phone cameras do."""
    img = Image.fromarray(pixels, "RGB")
    buf = io.BytesIO()
    if exif_rotate:
        img = img.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to display"
        img.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
