"""Tiny files that declare huge images, and what decoding each one costs.

Each is a few bytes to a few KB and declares a 6324 x 6324 canvas (just under
the 40-megapixel limit), so the header-only pixel check lets them through and
only the decode itself can be bounded. The tests upload them;
`python -m devtools.bombs` decodes each in a fresh process at 299 px
and prints the header's estimate and the measured peak memory.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import zlib

from PIL import Image

from kitchenware.core.contract import DEFAULT_IMAGE_SIZE

SIDE = 6324


def gif_screen() -> bytes:
    """A 43-byte GIF: a SIDE x SIDE logical screen holding one transparent 1x1 frame."""
    data = b"GIF89a" + struct.pack("<HHBBB", SIDE, SIDE, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    data += b"\x21\xf9\x04\x01\0\0\0\0"  # graphic control: colour 0 is transparent
    data += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\0" + b"\x3b"
    return data


def palette_png() -> bytes:
    """A SIDE x SIDE palette PNG with a transparent colour, all zeros (~40 KB compressed)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = (b"\0" * (SIDE + 1)) * SIDE  # filter byte + indices, every row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", SIDE, SIDE, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", b"\0\0\0\xff\xff\xff")
        + chunk(b"tRNS", b"\0")
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def animated_webp() -> bytes:
    """A ~140-byte animated WebP: two 1x1 frames on a SIDE x SIDE canvas."""
    frames = [Image.new("RGBA", (1, 1), colour) for colour in ((255, 0, 0, 255), (0, 255, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buffer.getvalue())
    vp8x = data.index(b"VP8X")  # canvas width-1 and height-1, 24-bit little-endian
    data[vp8x + 12 : vp8x + 15] = (SIDE - 1).to_bytes(3, "little")
    data[vp8x + 15 : vp8x + 18] = (SIDE - 1).to_bytes(3, "little")
    return bytes(data)


BOMBS = {"gif-screen": gif_screen, "palette-png": palette_png, "animated-webp": animated_webp}


_MEASURE = r"""
import json, resource, sys
from kitchenware.core.images import decode_estimate, load_image
data, size = sys.stdin.buffer.read(), int(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    outcome = "decoded %s" % (load_image(data, size=size, max_decode_bytes=int(sys.argv[2])).shape,)
except Exception as exc:
    outcome = "%s: %s" % (type(exc).__name__, exc)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"estimate_mib": decode_estimate(data, size) / 2**20,
                  "peak_mib": peak / 1024, "outcome": outcome}))
"""


def measure(data: bytes, size: int, max_decode_bytes: int) -> dict:
    """Decode `data` in a fresh interpreter; its estimate, peak RSS growth and outcome."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(size), str(max_decode_bytes)],
        input=data, capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=DEFAULT_IMAGE_SIZE, help="decode size, as the gateway asks"
    )
    parser.add_argument(
        "--max-decode-bytes", type=int, default=160 * 2**20, help="the gateway's MAX_DECODE_BYTES"
    )
    args = parser.parse_args(argv)
    for name, make in BOMBS.items():
        data = make()
        result = measure(data, args.size, args.max_decode_bytes)
        print(
            f"{name:14} {len(data):>7,} bytes  estimate {result['estimate_mib']:7.0f} MiB  "
            f"peak +{result['peak_mib']:5.0f} MiB  {result['outcome']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
