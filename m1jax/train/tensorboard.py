"""TensorBoard scalar event files written directly (TFRecord framing + a hand-encoded Event proto),
so neither TensorFlow nor tensorboard is needed to produce logs that TensorBoard reads.

Encoded messages (tensorflow/core/util/event.proto, summary.proto):
  Event   {double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
           SessionLog session_log = 7;}
  Summary {repeated Value value = 1;}   Value {string tag = 1; float simple_value = 2;}
  SessionLog {SessionStatus status = 1;}  (START = 1: TensorBoard drops older events at steps >= this one)
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()
_FILE_COUNT = itertools.count()  # unique file names within a process


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(step: int, wall_time: float, scalars: dict[str, float] | None = None,
                 file_version: str | None = None, session_start: bool = False) -> bytes:
    """One serialized Event with a simple_value per scalar (or the file_version header event, or a
    session START marker)."""
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if session_start:
        msg += _field_bytes(7, _varint(1 << 3 | 0) + _varint(1))
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items()
        )
        msg += _field_bytes(5, values)
    return msg


def frame_record(data: bytes) -> bytes:
    """TFRecord framing: length, masked CRC of the length, data, masked CRC of the data."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))


def read_records(path: str) -> list[bytes]:
    """The records of a TFRecord file, checking both CRCs (for tests and tooling)."""
    out = []
    with open(path, "rb") as f:
        while header := f.read(8):
            (n,) = struct.unpack("<Q", header)
            if struct.unpack("<I", f.read(4))[0] != _masked_crc(header):
                raise ValueError(f"{path}: corrupt length CRC")
            data = f.read(n)
            if struct.unpack("<I", f.read(4))[0] != _masked_crc(data):
                raise ValueError(f"{path}: corrupt data CRC")
            out.append(data)
    return out


class SummaryWriter:
    """Appends scalar events to ``logdir/events.out.tfevents.<time>.<host>.<pid>.<n>``; flushes every write.

    ``purge_from_step`` (a resumed run's first step) writes a session START there, so TensorBoard drops
    the earlier run's events from that step on instead of showing both.
    """

    def __init__(self, logdir: str, *, purge_from_step: int | None = None):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_COUNT)}"
        self.path = os.path.join(logdir, name)
        self._f = open(self.path, "ab")  # noqa: SIM115 - open for the run
        self._write(encode_event(0, time.time(), file_version="brain.Event:2"))
        if purge_from_step is not None:
            self._write(encode_event(purge_from_step, time.time(), session_start=True))

    def _write(self, event: bytes):
        self._f.write(frame_record(event))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float]):
        self._write(encode_event(step, time.time(), values))

    def close(self):
        self._f.close()
