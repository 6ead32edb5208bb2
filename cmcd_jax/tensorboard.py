"""TensorBoard scalar event files written without TensorFlow or the tensorboard package.

An event file is a sequence of TFRecords (uint64 length, masked CRC-32C of the length,
data, masked CRC-32C of the data), each holding one serialized `Event` protobuf, encoded
here by hand:

    Event   {double wall_time = 1; int64 step = 2; string file_version = 3;
             Summary summary = 5;}
    Summary {repeated Value value = 1;}
    Value   {string tag = 1; float simple_value = 2;}
"""

from __future__ import annotations

import functools
import pathlib
import socket
import struct
import time
from collections.abc import Mapping

_CRC32C_POLY = 0x82F63B78  # Castagnoli polynomial, bit-reversed.
_MASK_DELTA = 0xA282EAD8
_FILE_VERSION = "brain.Event:2"


@functools.cache
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_POLY if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses it."""
    table = _crc32c_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits, add a constant (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord frame around `data`."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # Negative int64s take ten bytes, two's complement.
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
    """A serialized `Event` with a file version or a summary of scalar values."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode())
                              + _varint(2 << 3 | 5) + struct.pack("<f", value))
            for tag, value in scalars.items())
        out += _length_delimited(5, values)
    return out


class EventWriter:
    """Appends scalar summaries to a new `events.out.tfevents.<time>.<host>` file in `logdir`.

    Each writer starts its own file (TensorBoard reads every file of a directory), so a
    resumed run simply adds one; a name already taken in the same second is appended to.
    """

    def __init__(self, logdir: str | pathlib.Path):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = self.logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self._file = self.path.open("ab")
        self._file.write(tfrecord(encode_event(now, file_version=_FILE_VERSION)))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Logs `value` under `tag` at `step`."""
        self.scalars({tag: value}, step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Logs every `tag: value` of `values` at `step`, in one event."""
        values = {tag: float(value) for tag, value in values.items()}
        self._file.write(tfrecord(encode_event(time.time(), int(step), scalars=values)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
