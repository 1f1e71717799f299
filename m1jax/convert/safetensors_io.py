"""Streaming safetensors I/O on numpy (bf16 through ml_dtypes), one tensor at a time.

The format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}, then the raw little-endian data. Reading a
tensor touches only its own bytes, so peak memory is the largest tensor, not the file.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A malformed, truncated or inconsistent safetensors file; the message names file and key."""


class SafetensorsReader:
    """Random access to the tensors of one .safetensors file without loading the rest."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"safetensors file not found: {self.path}")
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{self.path}: truncated (no header length; file is {size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(_MAX_HEADER, size - 8):
                raise SafetensorsError(
                    f"{self.path}: header length {n} exceeds the file ({size} bytes): truncated or corrupt"
                )
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{self.path}: corrupt header ({e})") from e
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries = {}
        for name, e in header.items():
            dt = e.get("dtype")
            if dt not in DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {dt!r}")
            shape = tuple(int(s) for s in e["shape"])
            begin, end = (int(x) for x in e["data_offsets"])
            nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dt].itemsize
            if end - begin != nbytes or begin < 0:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} {dt}{list(shape)} needs {nbytes} bytes "
                    f"but its offsets span {end - begin}"
                )
            if self._data_start + end > size:
                raise SafetensorsError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte {self._data_start + end} "
                    f"but the file has {size} bytes"
                )
            self._entries[name] = (DTYPES[dt], shape, begin)

    def keys(self):
        return self._entries.keys()

    def __contains__(self, name):
        return name in self._entries

    def shape(self, name) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name) -> np.dtype:
        return self._entries[name][0]

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a fresh numpy array (only its bytes are read)."""
        if name not in self._entries:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        dtype, shape, begin = self._entries[name]
        count = int(np.prod(shape, dtype=np.int64))
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            arr = np.fromfile(f, dtype=dtype.newbyteorder("<"), count=count)
        if arr.size != count:
            raise SafetensorsError(f"{self.path}: truncated while reading tensor {name!r}")
        return arr.reshape(shape)


_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class TensorSpec:
    """One tensor to write: name, shape, dtype and a zero-argument function producing its data."""

    __slots__ = ("name", "shape", "dtype", "produce")

    def __init__(self, name: str, shape, dtype, produce):
        self.name, self.shape, self.dtype, self.produce = name, tuple(int(s) for s in shape), np.dtype(dtype), produce

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def write_safetensors(path: str | os.PathLike, specs: list[TensorSpec], metadata: dict[str, str] | None = None):
    """Write ``specs`` in order, producing and writing one tensor at a time (peak memory: one tensor).

    The header is computed from the specs up front; each produced array must match its spec.
    """
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for s in specs:
        if s.dtype not in _DTYPE_NAMES:
            raise SafetensorsError(f"{path}: tensor {s.name!r} has unsupported dtype {s.dtype}")
        header[s.name] = {
            "dtype": _DTYPE_NAMES[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]
        }
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for s in specs:
            arr = np.asarray(s.produce())
            if arr.shape != s.shape or arr.dtype != s.dtype:
                raise SafetensorsError(
                    f"{path}: tensor {s.name!r} produced {arr.dtype}{list(arr.shape)}, planned {s.dtype}{list(s.shape)}"
                )
            f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
            del arr
