"""Load a Hugging Face MiniMax checkpoint directory (config.json + safetensors) into MiniMaxM1."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from m1jax.config import ModelConfig
from m1jax.convert import names
from m1jax.convert.safetensors_io import SafetensorsReader
from m1jax.model import MiniMaxM1

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: the message names the key (and file)."""


class CheckpointReader:
    """All tensors of a checkpoint directory, sharded (index json) or a single file, read lazily."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        index = os.path.join(self.path, INDEX_FILE)
        if os.path.exists(index):
            with open(index) as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
            files = sorted(set(weight_map.values()))
            for fname in files:
                if not os.path.exists(os.path.join(self.path, fname)):
                    raise CheckpointError(f"{index} names shard {fname!r}, which is missing from {self.path}")
            self._readers = {f: SafetensorsReader(os.path.join(self.path, f)) for f in files}
            self._where = {}
            for key, fname in weight_map.items():
                if key not in self._readers[fname]:
                    raise CheckpointError(f"{index} maps {key!r} to {fname!r}, which does not contain it")
                self._where[key] = fname
        else:
            single = os.path.join(self.path, SINGLE_FILE)
            if not os.path.exists(single):
                raise CheckpointError(f"{self.path}: neither {INDEX_FILE} nor {SINGLE_FILE} found")
            self._readers = {SINGLE_FILE: SafetensorsReader(single)}
            self._where = {k: SINGLE_FILE for k in self._readers[SINGLE_FILE].keys()}

    def keys(self):
        return self._where.keys()

    def file_of(self, key) -> str:
        return os.path.join(self.path, self._where[key])

    def shape(self, key):
        return self._readers[self._where[key]].shape(key)

    def read(self, key) -> np.ndarray:
        return self._readers[self._where[key]].read(key)


def get_param(model: nnx.Module, path: str) -> nnx.Variable:
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def load_hf(path: str | os.PathLike, *, dtype: str | None = None, **config_overrides) -> MiniMaxM1:
    """Build a MiniMaxM1 from a Hugging Face checkpoint directory.

    Accepts both config forms (see ModelConfig.from_hf), sharded or single-file safetensors, and
    ignores the derived decay buffers native transformers writes. Tensors are read one at a time.
    ``dtype`` sets the parameter dtype (default: the checkpoint's torch_dtype, else float32);
    other keyword arguments override ModelConfig fields (e.g. dtype="bfloat16" for compute).
    Raises CheckpointError naming the key on a missing, unexpected or mis-shaped tensor.
    """
    path = os.fspath(path)
    if dtype is not None:
        config_overrides["param_dtype"] = dtype
    config = ModelConfig.from_hf(path, **config_overrides)
    reader = CheckpointReader(path)
    model = nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0)))

    expected = set()
    for entry in names.entries(config):
        expected.update(entry.hf_keys)
    missing = [k for k in _ordered(config) if k not in reader.keys()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r}{more}")
    unexpected = sorted(k for k in reader.keys() if k not in expected and not names.is_ignored(k))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} in {reader.file_of(unexpected[0])}{more}")

    for entry in names.entries(config):
        var = get_param(model, entry.ours)
        want = tuple(var.get_value().shape)
        per_key = want[1:] if entry.per_expert else want
        if entry.transpose:
            per_key = per_key[::-1]
        arrays = []
        for key in entry.hf_keys:
            got = tuple(reader.shape(key))
            if got != per_key:
                raise CheckpointError(
                    f"tensor {key!r} in {reader.file_of(key)} has shape {list(got)}, expected {list(per_key)} "
                    f"for this config"
                )
            arr = reader.read(key)
            arrays.append(arr.T if entry.transpose else arr)
        value = np.stack(arrays) if entry.per_expert else arrays[0]
        var.set_value(jnp.asarray(value.astype(config.jnp_param_dtype)))
    return model


def _ordered(config):
    for entry in names.entries(config):
        yield from entry.hf_keys
