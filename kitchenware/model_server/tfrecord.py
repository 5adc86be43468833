"""Read TFRecord files (the warm-up records' format) without TensorFlow.

A record is: length (uint64 LE), masked CRC-32C of the length (uint32 LE), the
data, masked CRC-32C of the data. TensorFlow's reader refuses a file whose
framing or checksums do not hold ("corrupted record"); this one does the same,
so the OpenVINO model server judges a warm-up file exactly as TF Serving does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path


class CorruptRecord(Exception):
    """The file is not TFRecord, or a record's checksum does not match."""


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path) -> Iterator[bytes]:
    """Yield each record's bytes; CorruptRecord names the offset of the first bad one."""
    with open(path, "rb") as stream:
        offset = 0
        while True:
            header = stream.read(12)
            if not header:
                return
            if len(header) < 12:
                raise CorruptRecord(f"truncated record at {offset}")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                raise CorruptRecord(f"corrupted record at {offset}")
            data = stream.read(length)
            footer = stream.read(4)
            if len(data) < length or len(footer) < 4:
                raise CorruptRecord(f"truncated record at {offset}")
            if masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise CorruptRecord(f"corrupted record at {offset}")
            offset += 16 + length
            yield data
