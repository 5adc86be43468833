"""The TensorFlow-free TFRecord reader the model server reads warm-up records with."""

from __future__ import annotations

import struct

import pytest

from kitchenware.model_server.tfrecord import CorruptRecord, crc32c, masked_crc, read_records


def frame(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))
    )


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_records_round_trip(tmp_path):
    path = tmp_path / "records"
    path.write_bytes(frame(b"first") + frame(b"") + frame(b"x" * 1000))
    assert list(read_records(path)) == [b"first", b"", b"x" * 1000]


@pytest.mark.parametrize("position", [3, 9, 14, 20])  # length, its crc, data, data crc
def test_a_flipped_byte_is_a_corrupted_record(tmp_path, position):
    data = bytearray(frame(b"payload") + frame(b"second"))
    data[position] ^= 0x01
    path = tmp_path / "records"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRecord, match="at 0"):
        list(read_records(path))


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "records"
    path.write_bytes(frame(b"payload")[:-2])
    with pytest.raises(CorruptRecord, match="truncated record at 0"):
        list(read_records(path))
