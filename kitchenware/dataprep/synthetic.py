"""Draw a small synthetic data set of the six classes in the Kaggle layout.

The drawings are SYNTHETIC (Pillow shapes, not photos). They exist so the
whole pipeline (prep, training, export, serving) runs and is tested with no
download. Each class has a distinct silhouette a tiny CNN can learn: a cup is a
body with a handle, a glass a tall see-through trapezoid (sometimes on a stem),
a plate an ellipse with a rim, a spoon a handle with an oval bowl, a fork a
handle with tines, a knife a handle with a tapered blade. Proportions, colours,
position, scale, rotation, background, lighting and noise vary per image.

A few exact duplicates (byte copies) and near duplicates (re-encoded at another
JPEG quality and slightly resized) are planted on purpose, inside train and
from train into test, and listed in `planted_duplicates.csv` so tests can
check that `kitchenware prep` finds them. Output: `images/<Id>.jpg`,
`train.csv` (Id,label), `test.csv` (Id), `sample_submission.csv` (Id,label),
`test_labels.csv` (the answers for the test Ids, as kitchenware-mini has) and
`planted_duplicates.csv`. Same seed -> byte-identical files.
"""

from __future__ import annotations

import colorsys
import csv
import io
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.errors import KitchenwareError
from kitchenware.core.labels import CLASSES

# What the command writes; `--force` removes exactly these, nothing else.
OUTPUT_FILES = (
    "train.csv",
    "test.csv",
    "sample_submission.csv",
    "test_labels.csv",
    "planted_duplicates.csv",
)
# Images are landscape 4:3 like most Kaggle photos; --size is the long side.
ASPECT = 3 / 4


@dataclass(frozen=True)
class SampleDataConfig:
    """`kitchenware sample-data` options (OUT, positional, is added by hand); generate()'s too."""

    per_class: int = option(60, help="train images per class")
    size: int = option(256, help="long side in pixels (4:3)")
    test_per_class: int = option(10, help="test images per class")
    seed: int = option(42, help="random seed (same seed, same bytes)")
    workers: int = option(1, help="processes drawing images")
    force: bool = option(False, help="replace an earlier sample-data output")


def add_arguments(parser) -> None:
    parser.add_argument("out", type=Path, help="folder to write (Kaggle layout)")
    add_fields(parser, SampleDataConfig)


def run(args) -> int:
    summary = generate(args.out, **asdict(from_args(SampleDataConfig, args)))
    print(
        f"wrote {summary['train']} train + {summary['test']} test synthetic images "
        f"({summary['planted']} planted duplicates) to {args.out}"
    )
    return 0


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


def draw_photo(label: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One synthetic 'photo' of `label` as an (height, width, 3) uint8 array."""
    if label not in DRAWERS:
        raise KitchenwareError(f"no drawing for label {label!r}")
    scale = min(1.0, MAX_SCENE_SIDE / max(width, height))
    scene = _draw_scene(label, rng, max(1, round(width * scale)), max(1, round(height * scale)))
    if scene.size != (width, height):
        scene = scene.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(scene, dtype=np.float32)
    pixels = pixels * _lighting(rng, width, height)
    pixels += rng.normal(0.0, rng.uniform(2, 7), size=pixels.shape).astype(np.float32)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.3:  # camera slightly out of focus
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
    return np.asarray(img)


def _draw_scene(label: str, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Background, shadow and the object, before lighting and sensor noise."""
    side = int(min(width, height) * rng.uniform(0.7, 1.0))
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    DRAWERS[label](ImageDraw.Draw(layer), side, rng)
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = rng.uniform(-18, 18) if label in UPRIGHT else rng.uniform(0, 360)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC)
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))

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
    return canvas.convert("RGB")


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


# --------------------------------------------------------------------------- data set


@dataclass(frozen=True)
class Item:
    index: int  # position in generation order: the RNG stream of this image
    label: str
    split: str  # "train" or "test"


@dataclass(frozen=True)
class Planted:
    """A duplicate written on purpose: `copy` repeats `original`."""

    copy: int
    original: int
    kind: str  # "exact" or "near"
    how: str


def _render(args: tuple[int, int, str, int, int]) -> bytes:
    seed, index, label, width, height = args
    rng = np.random.default_rng([seed, index])
    pixels = draw_photo(label, rng, width, height)
    quality = int(rng.integers(82, 96))
    return encode_photo(pixels, quality, exif_rotate=rng.random() < 0.05)


def near_copy(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Re-encode at another JPEG quality and resize by a few percent."""
    with Image.open(io.BytesIO(data)) as img:
        exif = img.getexif()
        scale = float(rng.choice([0.88, 0.92, 1.08]))
        quality = int(rng.integers(60, 76))
        size = (round(img.width * scale), round(img.height * scale))
        small = img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue(), f"re-encoded at quality {quality}, resized x{scale:g}"


def _plan(per_class: int, test_per_class: int) -> tuple[list[Item], list[tuple[int, int, str]]]:
    """All items in generation order, and (copy, original, kind) duplicate slots.

    Planted copies take the last train slots of a class (train counts stay
    exactly `per_class`) or a test slot; each original is an earlier,
    drawn train image of the same class.
    """
    items: list[Item] = []
    first: dict[str, int] = {}
    for label in CLASSES:
        first[label] = len(items)
        items += [Item(first[label] + k, label, "train") for k in range(per_class)]
    test_first: dict[str, int] = {}
    for label in CLASSES:
        test_first[label] = len(items)
        items += [Item(test_first[label] + k, label, "test") for k in range(test_per_class)]

    slots: list[tuple[int, int, str]] = []
    if per_class >= 4:
        # Inside train: exact copies for cup/fork/glass, near copies for knife/plate/spoon.
        for k, label in enumerate(CLASSES):
            kind = "exact" if k < 3 else "near"
            slots.append((first[label] + per_class - 1, first[label] + k % 2, kind))
    if per_class >= 4 and test_per_class >= 2:
        # Train -> test leaks: one exact, one near.
        slots.append((test_first["plate"], first["plate"] + 2, "exact"))
        slots.append((test_first["spoon"], first["spoon"] + 2, "near"))
    return items, slots


def _clear(out: Path, force: bool) -> None:
    existing = [out / name for name in (*OUTPUT_FILES, "images") if (out / name).exists()]
    if out.exists() and not out.is_dir():
        raise KitchenwareError(f"{out} exists and is not a folder")
    if existing and not force:
        raise KitchenwareError(
            f"{out} already holds a data set ({existing[0].name}); pass --force to replace it"
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def generate(
    out: Path,
    per_class: int = SampleDataConfig.per_class,
    size: int = SampleDataConfig.size,
    test_per_class: int = SampleDataConfig.test_per_class,
    seed: int = SampleDataConfig.seed,
    workers: int = SampleDataConfig.workers,
    force: bool = SampleDataConfig.force,
) -> dict:
    """Write the data set; returns counts {'train', 'test', 'planted'}."""
    if per_class < 1 or test_per_class < 0:
        raise KitchenwareError("--per-class must be >= 1 and --test-per-class >= 0")
    if size < 32:
        raise KitchenwareError(f"--size {size} is too small (minimum 32)")
    out = Path(out)
    _clear(out, force)
    width, height = size, max(24, round(size * ASPECT))
    items, slots = _plan(per_class, test_per_class)
    copies = {copy for copy, _, _ in slots}

    # Kaggle Ids: a seeded shuffle, so Id order says nothing about the class.
    width_id = max(4, len(str(len(items) - 1)))
    order = np.random.default_rng([seed, 2**31]).permutation(len(items))
    ids = {it.index: f"{int(order[it.index]):0{width_id}d}" for it in items}
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)

    # Files are written as they come; only the originals of planted copies stay in memory.
    originals = {original for _, original, _ in slots}
    kept: dict[int, bytes] = {}
    jobs = [(seed, it.index, it.label, width, height) for it in items if it.index not in copies]
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        chunk = max(1, min(32, len(jobs) // (workers * 8)))
        rendered = pool.map(_render, jobs, chunksize=chunk) if pool else map(_render, jobs)
        for job, blob in zip(jobs, rendered, strict=True):
            (images / f"{ids[job[1]]}.jpg").write_bytes(blob)
            if job[1] in originals:
                kept[job[1]] = blob
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)

    planted: list[Planted] = []
    for copy, original, kind in slots:
        if kind == "exact":
            blob, how = kept[original], "byte copy"
        else:
            blob, how = near_copy(kept[original], np.random.default_rng([seed, copy, 1]))
        (images / f"{ids[copy]}.jpg").write_bytes(blob)
        planted.append(Planted(copy, original, kind, how))

    train = sorted((ids[it.index], it.label) for it in items if it.split == "train")
    test = sorted((ids[it.index], it.label) for it in items if it.split == "test")
    _write_csv(out / "train.csv", ["Id", "label"], train)
    _write_csv(out / "test.csv", ["Id"], [(i,) for i, _ in test])
    _write_csv(out / "sample_submission.csv", ["Id", "label"], [(i, CLASSES[0]) for i, _ in test])
    _write_csv(out / "test_labels.csv", ["Id", "label"], test)
    split_of = {it.index: it.split for it in items}
    _write_csv(
        out / "planted_duplicates.csv",
        ["Id", "original", "kind", "split", "how"],
        [(ids[p.copy], ids[p.original], p.kind, split_of[p.copy], p.how) for p in planted],
    )
    return {"train": len(train), "test": len(test), "planted": len(planted)}


def _write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
