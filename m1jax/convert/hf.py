"""Load a Hugging Face MiniMax checkpoint directory (config.json + safetensors) into MiniMaxM1."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from m1jax.config import ModelConfig
from m1jax.convert import names
from m1jax.convert.hf_files import export_files, has_tokenizer
from m1jax.convert.safetensors_io import SafetensorsReader, TensorSpec, write_safetensors
from m1jax.model import MiniMaxM1
from m1jax.model.lightning import lightning_decay

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
            self._where = dict.fromkeys(self._readers[SINGLE_FILE].keys(), SINGLE_FILE)

    def keys(self):
        return self._where.keys()

    def where(self, key) -> str:
        return os.path.join(self.path, self._where[key])

    def shape(self, key):
        return self._readers[self._where[key]].shape(key)

    def dtype(self, key) -> np.dtype:
        return self._readers[self._where[key]].dtype(key)

    def read(self, key) -> np.ndarray:
        return self._readers[self._where[key]].read(key)


def get_param(model: nnx.Module, path: str) -> nnx.Variable:
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _count(items, what):
    return f"{what} {items[0]!r}" + (f" (and {len(items) - 1} more)" if len(items) > 1 else "")


def check_source(source, config: ModelConfig, skeleton: MiniMaxM1) -> list[tuple[names.Entry, tuple]]:
    """Check every checkpoint tensor against the config before anything is read or written.

    Returns [(entry, m1jax parameter shape)]; raises CheckpointError naming the first missing,
    unexpected, non-float or mis-shaped tensor (and its file).
    """
    entries = list(names.entries(config))
    expected = {k for e in entries for k in e.hf_keys}
    keys = set(source.keys())
    missing = [k for e in entries for k in e.hf_keys if k not in keys]
    if missing:
        raise CheckpointError(f"{source.path}: {_count(missing, 'missing tensor')}")
    unexpected = sorted(k for k in keys if k not in expected and not names.is_ignored(k))
    if unexpected:
        first = source.where(unexpected[0])
        raise CheckpointError(f"{source.path}: {_count(unexpected, 'unexpected tensor')} in {first}")
    plan = []
    for entry in entries:
        shape = tuple(get_param(skeleton, entry.ours).get_value().shape)
        per_key = shape[1:] if entry.per_expert else shape
        per_key = per_key[::-1] if entry.transpose else per_key
        for key in entry.hf_keys:
            dt = np.dtype(source.dtype(key))
            if not (np.issubdtype(dt, np.floating) or dt == ml_dtypes.bfloat16):
                raise CheckpointError(f"tensor {key!r} in {source.where(key)} has dtype {dt}, expected a float")
            if tuple(source.shape(key)) != per_key:
                raise CheckpointError(
                    f"tensor {key!r} in {source.where(key)} has shape {list(source.shape(key))}, "
                    f"expected {list(per_key)} for this config"
                )
        plan.append((entry, shape))
    return plan


def _skeleton(config: ModelConfig) -> MiniMaxM1:
    return nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0)))


def load_params(source, config: ModelConfig, *, sharding: Callable | None = None) -> MiniMaxM1:
    """Build a MiniMaxM1 whose parameters are read from ``source`` one tensor at a time.

    ``source`` has keys(), shape(key), dtype(key), read(key) -> np.ndarray and where(key) -> str.
    ``sharding(param_path, logical_axes, shape) -> jax.sharding.Sharding`` places each parameter;
    each device then reads only the slices it holds (for stacked experts: only its experts' tensors).
    """
    model = _skeleton(config)
    dtype = config.jnp_param_dtype
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for entry, shape in check_source(source, config, model):

        def read(key, entry=entry):
            arr = source.read(key)
            return (arr.T if entry.transpose else arr).astype(dtype)

        def fetch(index, entry=entry):
            if entry.per_expert:
                experts = range(len(entry.hf_keys))[index[0]]
                return np.stack([read(entry.hf_keys[e])[index[1:]] for e in experts])
            return read(entry.hf_keys[0])[index]

        var = get_param(model, entry.ours)
        where = default if sharding is None else sharding(entry.ours, var.get_metadata().get("logical_axes"), shape)
        var.set_value(jax.make_array_from_callback(shape, where, fetch))
    return model


def native_buffer_specs(config: ModelConfig, out_dtype) -> list[TensorSpec]:
    """The four derived buffers per lightning layer that native transformers keeps in its state dict.

    Written only on request: with them, ``from_pretrained`` reports no missing keys and uses these
    decay rates (our config's ``decay_rule``) instead of recomputing its own.
    """
    specs = []
    B = config.block_size
    rng = np.arange(1, B + 1, dtype=np.float32)
    for i in range(config.num_hidden_layers):
        if not config.is_lightning(i):
            continue
        slope = lightning_decay(config, i)[:, None, None]  # [H, 1, 1]
        dist = (rng[:, None] - rng[None, :])[None, None]  # [1, 1, B, B]
        diag = slope * dist
        buffers = {
            "slope_rate": slope,
            "query_decay": np.exp(-slope * rng[:, None]),
            "key_decay": np.exp(-slope * (B - rng[:, None])),
            "diagonal_decay": np.where(diag >= 0, np.exp(-np.maximum(diag, 0)), 0.0),
        }
        for name, value in buffers.items():
            value = value.astype(out_dtype)
            key = names.BUFFER_KEY.format(i=i, name=name)
            specs.append(TensorSpec(key, value.shape, out_dtype, lambda v=value: v))
    return specs


def export_specs(model: MiniMaxM1, *, dtype=None) -> list[TensorSpec]:
    """The checkpoint tensors of ``model`` in names.entries order, each produced on demand.

    Per-expert tensors are sliced on the device before the transfer, so the host holds one
    checkpoint tensor at a time.
    """
    config = model.config
    out_dtype = np.dtype(jnp.dtype(dtype or config.param_dtype))
    specs = []
    for entry in names.entries(config):
        value = get_param(model, entry.ours).get_value()
        for e, key in enumerate(entry.hf_keys):
            shape = value.shape[1:] if entry.per_expert else value.shape
            shape = shape[::-1] if entry.transpose else shape

            def produce(value=value, e=e if entry.per_expert else None, transpose=entry.transpose):
                arr = np.asarray(jax.device_get(value if e is None else value[e])).astype(out_dtype)
                return arr.T if transpose else arr

            specs.append(TensorSpec(key, shape, out_dtype, produce))
    return specs


def load_hf(path: str | os.PathLike, *, dtype: str | None = None, sharding: Callable | None = None,
            **config_overrides) -> MiniMaxM1:
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
    return load_params(CheckpointReader(path), config, sharding=sharding)


def convert_hf(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str | None = None,
               shard_size: int | str = "5GB", overwrite: bool = False, native_buffers: bool = False,
               tokenizer: str | None = "source") -> str:
    """Re-write a checkpoint (cast dtype, re-shard, normalise the config) without building the model.

    Validates every tensor against the config like load_hf, then streams tensor by tensor: peak
    host memory is about one tensor (plus its cast), whatever the model size. The source's
    generation_config.json is carried over; ``tokenizer="source"`` copies its tokenizer files (if any),
    else see save_hf.
    """
    config = ModelConfig.from_hf(src)
    reader = CheckpointReader(src)
    specs = []
    for entry, _ in check_source(reader, config, _skeleton(config)):
        for key in entry.hf_keys:
            out = np.dtype(jnp.dtype(dtype)) if dtype else reader.dtype(key)
            specs.append(TensorSpec(key, reader.shape(key), out, lambda key=key, out=out: reader.read(key).astype(out)))
    if native_buffers:
        specs += native_buffer_specs(config, specs[0].dtype)
    if tokenizer == "source":
        tokenizer = os.fspath(src) if has_tokenizer(src) else None
    files, config = export_files(config.replace(param_dtype=np.dtype(specs[0].dtype).name), tokenizer, source=src)
    return _write_checkpoint(specs, config, dst, shard_size=shard_size, overwrite=overwrite, files=files)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like '5GB', '500MB', '40KB' (powers of 1000, as transformers)."""
    if isinstance(size, int):
        return size
    units = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    s = str(size).strip().upper()
    for unit, mult in units.items():
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * mult)
            except ValueError:
                break
    raise ValueError(f"cannot parse size {size!r}; use bytes or e.g. '5GB', '500MB'")


def save_hf(model: MiniMaxM1, path: str | os.PathLike, *, shard_size: int | str = "5GB", dtype: str | None = None,
            overwrite: bool = False, native_buffers: bool = False, tokenizer: str | None = None,
            bos_token: str = "", eos_token: str = "") -> str:
    """Write ``model`` as a Hugging Face checkpoint directory (original MiniMax tensor names).

    config.json carries the remote-code fields and those native transformers reads. Tensors are
    streamed into shards of at most ``shard_size`` bytes (one tensor may exceed it) with
    model.safetensors.index.json, or a single model.safetensors. Everything is written under a
    temporary name and renamed when complete: an interrupted save never leaves a valid-looking
    directory, and an existing checkpoint is only replaced (with overwrite=True) after success.
    ``native_buffers`` adds native transformers' derived decay buffers (see native_buffer_specs).
    ``tokenizer``: None, "bytes" (m1jax's byte tokenizer) or a tokenizer.json / tokenizer directory
    (``bos_token`` / ``eos_token`` name its special tokens when no tokenizer_config.json does); its
    BOS / EOS ids fill the config's where unset. A generation_config.json is always written.
    """
    specs = export_specs(model, dtype=dtype)
    if native_buffers:
        specs += native_buffer_specs(model.config, specs[0].dtype)
    config = model.config.replace(param_dtype=np.dtype(specs[0].dtype).name)
    files, config = export_files(config, tokenizer, bos_token=bos_token, eos_token=eos_token)
    return _write_checkpoint(specs, config, path, shard_size=shard_size, overwrite=overwrite, files=files)


def _write_checkpoint(specs, config: ModelConfig, path, *, shard_size, overwrite, files=None) -> str:
    """Write the tensors, config.json and ``files`` ({name: bytes}, e.g. the tokenizer) atomically."""
    limit = parse_size(shard_size)
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes

    def write(tmp):
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config.to_hf(), f, indent=2)
        for name, data in (files or {}).items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        if len(shards) == 1:
            write_safetensors(os.path.join(tmp, SINGLE_FILE), shards[0])
            return
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(tmp, fname), shard)
            weight_map.update({s.name: fname for s in shard})
        index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
        with open(os.path.join(tmp, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)

    return atomic_directory(path, write, overwrite=overwrite)


def atomic_directory(path, write: Callable[[str], None], *, overwrite: bool = False) -> str:
    """Run write(tmp_dir) and move tmp_dir to ``path`` only if it succeeds."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    tmp = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = f"{path}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
    os.rename(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return path
