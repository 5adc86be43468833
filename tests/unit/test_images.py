"""kitchenware.core.images.load_image on real files of every kind it must handle."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kitchenware.core.errors import ImageError, ImageTooLarge
from kitchenware.core.images import encode_jpeg, image_size, load_image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _two_tone(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: orientation mistakes are easy to see."""
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(RED, (0, 0, width // 2, height))
    return img


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _close(pixel, color, tol=40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, color, strict=True))


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [
        (1, lambda im: im),
        (3, lambda im: im.transpose(Image.Transpose.ROTATE_180)),
        (6, lambda im: im.transpose(Image.Transpose.ROTATE_90)),
        (8, lambda im: im.transpose(Image.Transpose.ROTATE_270)),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, stored):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    path.write_bytes(_save(stored(_two_tone()), "JPEG", quality=95, exif=exif.tobytes()))
    pixels = load_image(path)
    assert pixels.shape == (20, 40, 3) and pixels.dtype == np.uint8
    assert _close(pixels[10, 5], RED) and _close(pixels[10, 35], BLUE)


def test_rgb_jpeg_path_and_bytes_agree(tmp_path):
    data = _save(_two_tone(), "JPEG", quality=90)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert np.array_equal(load_image(path), load_image(data))
    assert np.array_equal(load_image(str(path)), load_image(io.BytesIO(data)))
    assert image_size(data) == (40, 20)


def test_greyscale_palette_and_cmyk_become_rgb():
    grey = load_image(_save(Image.new("L", (8, 6), 77), "PNG"))
    assert grey.shape == (6, 8, 3) and np.all(grey == 77)

    palette = _two_tone().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    p = load_image(_save(palette, "PNG"))
    assert p.shape == (20, 40, 3) and _close(p[10, 5], RED, 5) and _close(p[10, 35], BLUE, 5)

    cmyk = load_image(_save(_two_tone().convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == (20, 40, 3) and _close(cmyk[10, 5], RED) and _close(cmyk[10, 35], BLUE)


def test_transparency_is_flattened_onto_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 5, 10))
    pixels = load_image(_save(rgba, "PNG"))
    assert tuple(pixels[5, 2]) == (200, 0, 0) and tuple(pixels[5, 8]) == (255, 255, 255)

    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.paste(1, (0, 0, 5, 10))
    pixels = load_image(_save(pal, "PNG", transparency=0))
    assert tuple(pixels[5, 2]) == (0, 200, 0) and tuple(pixels[5, 8]) == (255, 255, 255)


def test_16_bit_greyscale_uses_its_full_range():
    ramp = np.linspace(1000, 3000, 16 * 4, dtype=np.uint16).reshape(4, 16)
    data = _save(Image.fromarray(ramp), "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I")  # really stored as 16-bit
    pixels = load_image(data)
    assert pixels.shape == (4, 16, 3)
    assert pixels.min() == 0 and pixels.max() == 255  # scaled, not clipped to white


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_other_formats_decode(fmt):
    pixels = load_image(_save(_two_tone(), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert pixels.shape == (20, 40, 3)
    assert _close(pixels[10, 5], RED, 10) and _close(pixels[10, 35], BLUE, 10)


def test_resize_gives_a_square_of_the_requested_size():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, size=(300, 400, 3), dtype=np.uint8)
    out = load_image(encode_jpeg(photo), size=96)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8


def test_truncated_jpeg_is_an_image_error(tmp_path):
    rng = np.random.default_rng(1)
    data = encode_jpeg(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        load_image(path)


def test_zero_byte_file_and_bytes_are_image_errors(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_non_image_is_an_image_error(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("Id,label\n0001,cup\n")
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(path)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


def test_decompression_bomb_is_refused_from_the_header():
    bomb = _png_header_only(100_000, 100_000)  # 10 gigapixels declared
    assert len(bomb) < 100
    # Refused from the header: decoding 10 Gpx would need 30 GB of memory.
    with pytest.raises(ImageTooLarge, match="10,?000,?000,?000 pixels"):
        load_image(bomb)


def test_max_pixels_is_configurable():
    data = _save(_two_tone(), "PNG")
    with pytest.raises(ImageTooLarge):
        load_image(data, max_pixels=799)
    assert load_image(data, max_pixels=800).shape == (20, 40, 3)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_formats_outside_the_photo_allowlist_are_refused(fmt):
    """Pillow can open these, but the loader only accepts photo formats."""
    data = _save(_two_tone(), fmt)
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(data)


def test_eps_is_never_handed_to_ghostscript():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(eps)


def test_pillow_global_limit_is_left_alone():
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS is not None


# --- decompression bombs: tiny files that declare huge canvases ---


BOUNDED_DECODE = r"""
import resource, sys
from kitchenware.core.images import load_image
data = sys.stdin.buffer.read()
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
# 300 MiB of address space beyond what the interpreter has mapped so far
resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
print(load_image(data, size=299).shape)
"""


@pytest.mark.parametrize("name", ["gif-screen", "palette-png"])
def test_a_bomb_decodes_within_a_memory_limit(name):
    """Each declares 40 megapixels; a full-size RGBA copy alone would be 160 MB (it took
    ~800 MB before decoding was bounded), the frame itself is 40 MB."""
    import subprocess
    import sys

    from devtools.bombs import BOMBS

    proc = subprocess.run(
        [sys.executable, "-c", BOUNDED_DECODE],
        input=BOMBS[name](),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == "(299, 299, 3)"


def test_a_decode_over_the_byte_limit_is_refused_before_decoding():
    from devtools.bombs import animated_webp
    from kitchenware.core.images import decode_estimate

    data = animated_webp()
    assert decode_estimate(data, 299) > 500 * 2**20  # libwebp's canvases: ~16 bytes a pixel
    with pytest.raises(ImageTooLarge, match=r"would take ~\d+ MiB; the limit is 160 MiB"):
        load_image(data, size=299, max_decode_bytes=160 * 2**20)
    assert load_image(_save(_two_tone(), "WEBP"), size=8, max_decode_bytes=2**20).shape == (8, 8, 3)


@pytest.mark.parametrize("mode", ["P-transparent", "LA", "I;16", "RGBA", "L", "RGB"])
@pytest.mark.parametrize("factor", [1, 3, 7])
def test_strips_give_the_pixels_of_converting_and_reducing_the_whole_image(
    monkeypatch, mode, factor
):
    from kitchenware.core import images

    rng = np.random.default_rng(factor)
    height, width = 301, 157  # not a multiple of the strip or of the factor
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    else:
        base = mode.split("-")[0]
        channels = {"P": 1, "L": 1, "LA": 2, "RGBA": 4, "RGB": 3}[base]
        pixels = rng.integers(0, 255, (height, width, channels), dtype=np.uint8).squeeze()
        img = Image.fromarray(pixels, "L" if base == "P" else base)
        if base == "P":
            img = img.convert("P")
            img.info["transparency"] = 3
    monkeypatch.setattr(images, "STRIP_ROWS", 40)
    whole = images._to_rgb(img)
    whole = whole.reduce(factor) if factor > 1 else whole
    assert np.array_equal(np.asarray(images._rgb_reduced(img, factor)), np.asarray(whole))


def test_the_estimate_decodes_no_pixels_even_of_a_broken_png():
    from kitchenware.core.images import decode_estimate

    data = _save(_two_tone(400, 300), "PNG")
    truncated = data[: len(data) // 2]  # header and half the pixel data
    assert decode_estimate(truncated, 32) > 400 * 300  # read from the header alone
    with pytest.raises(ImageError):
        load_image(truncated, size=32)
