"""Plain PyTorch state_dict (.pt / .bin) import and export, in either key set of convert.names.

Written by default in the NATIVE names of transformers' ``MiniMaxForCausalLM`` (fused experts, the
derived lightning buffers included), so ``model.load_state_dict(torch.load(path), strict=True)`` works;
``key_names="checkpoint"`` writes the on-disk names of the released checkpoints instead (what remote
code's module takes). Reading accepts both and tells them apart by the keys.

torch.save / torch.load hold the whole state dict at once (a format limit); loading uses
mmap=True so tensors are paged in as they are converted. Use safetensors for very large models.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np

from m1jax.config import ModelConfig
from m1jax.convert import names
from m1jax.convert.hf import CheckpointError, export_specs, load_params, native_buffer_specs
from m1jax.model import MiniMaxM1

KEY_NAMES = ("native", "checkpoint")


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the `torch` extra is not installed
        raise ImportError("the PyTorch state_dict path needs torch: pip install 'm1jax[torch]'") from e
    return torch


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _from_numpy(a: np.ndarray):
    torch = _torch()
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


class StateDictSource:
    """A torch state dict (a mapping or a .pt/.bin file) as a tensor source for load_params."""

    def __init__(self, state_dict_or_path):
        if isinstance(state_dict_or_path, (str, os.PathLike)):
            self.path = os.fspath(state_dict_or_path)
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"no state dict at {self.path}")
            try:
                sd = _torch().load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise CheckpointError(f"{self.path}: cannot read as a torch state dict ({e})") from e
        else:
            self.path, sd = "<state_dict>", state_dict_or_path
        if "state_dict" in sd and not hasattr(sd["state_dict"], "shape"):
            sd = sd["state_dict"]
        self._sd = sd

    def keys(self):
        return self._sd.keys()

    def shape(self, key):
        return tuple(self._sd[key].shape)

    def dtype(self, key) -> np.dtype:
        t = self._sd[key]
        return np.dtype(ml_dtypes.bfloat16) if t.dtype == _torch().bfloat16 else _to_numpy(t.flatten()[:0]).dtype

    def read(self, key) -> np.ndarray:
        return _to_numpy(self._sd[key])

    def where(self, key) -> str:
        return self.path


class CheckpointNames:
    """A source in native names (see convert.names) seen through the checkpoint names load_params reads.

    A fused native tensor is read once and sliced per checkpoint key (one expert, gate or up half).
    Keys outside the name map pass through, so check_source still reports them.
    """

    def __init__(self, source, config: ModelConfig):
        self._source, self.path, self._experts = source, source.path, config.num_local_experts
        present = set(source.keys())
        self._map = {}  # checkpoint key -> (native key, expert index or None, (part, parts))
        for native_key, group in names.native_groups(config).items():
            if native_key in present:
                for entry in group:
                    for e, key in enumerate(entry.hf_keys):
                        self._map[key] = (native_key, e if entry.per_expert else None, entry.part)
        used = {native for native, _, _ in self._map.values()}
        self._keys = [*self._map, *(k for k in present if k not in used and k not in self._map)]
        self._cache = (None, None)

    @staticmethod
    def applies(source, config: ModelConfig) -> bool:
        """Whether ``source`` holds any native key that is not also a checkpoint key."""
        present = set(source.keys())
        return any(key in present and key not in group[0].hf_keys
                   for key, group in names.native_groups(config).items())

    def keys(self):
        return self._keys

    def shape(self, key):
        if key not in self._map:
            return self._source.shape(key)
        native, expert, (_, parts) = self._map[key]
        shape = tuple(self._source.shape(native))
        if expert is None or len(shape) != 3 or shape[0] != self._experts or shape[1] % parts:
            return shape  # a mis-shaped fused tensor fails check_source, which names it through where()
        return (shape[1] // parts, shape[2])

    def dtype(self, key):
        return self._source.dtype(self._map[key][0] if key in self._map else key)

    def where(self, key) -> str:
        if key not in self._map:
            return self._source.where(key)
        native = self._map[key][0]
        return f"{self._source.where(native)} (native tensor {native!r} {list(self._source.shape(native))})"

    def read(self, key) -> np.ndarray:
        if key not in self._map:
            return self._source.read(key)
        native, expert, (part, parts) = self._map[key]
        if self._cache[0] != native:
            self._cache = (native, self._source.read(native))
        arr = self._cache[1]
        if expert is None:
            return arr
        rows = arr.shape[1] // parts
        return arr[expert, part * rows:(part + 1) * rows]


def load_torch(state_dict_or_path, config: ModelConfig, **kwargs) -> MiniMaxM1:
    """A MiniMaxM1 from a torch state dict in either key set (native or checkpoint names, see convert.names)."""
    source = StateDictSource(state_dict_or_path)
    if CheckpointNames.applies(source, config):
        source = CheckpointNames(source, config)
    return load_params(source, config, **kwargs)


def to_torch_state_dict(model: MiniMaxM1, *, dtype=None, key_names: str = "native",
                        native_buffers: bool = False) -> dict:
    """{key: torch.Tensor} of the model.

    ``key_names="native"``: transformers' ``MiniMaxForCausalLM`` names and layouts, with the derived
    lightning buffers (a strict ``load_state_dict`` needs them). ``"checkpoint"``: the released
    checkpoints' names (remote code's modules), with the buffers only if ``native_buffers``.
    """
    if key_names not in KEY_NAMES:
        raise ValueError(f"key names {key_names!r}: must be one of {KEY_NAMES}")
    specs = export_specs(model, dtype=dtype)
    if key_names == "checkpoint":
        extra = native_buffer_specs(model.config, specs[0].dtype) if native_buffers else []
        return {s.name: _from_numpy(s.produce()) for s in [*specs, *extra]}
    by_key = {s.name: s for s in specs}
    out = {}
    for native, group in names.native_groups(model.config).items():
        parts = [np.stack([by_key[k].produce() for k in e.hf_keys]) if e.per_expert else by_key[e.hf_keys[0]].produce()
                 for e in group]
        out[native] = _from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
    for s in native_buffer_specs(model.config, specs[0].dtype):
        out[s.name] = _from_numpy(s.produce())
    return out


def save_torch(model: MiniMaxM1, path: str | os.PathLike, *, dtype=None, key_names: str = "native",
               native_buffers: bool = False) -> str:
    """torch.save ``to_torch_state_dict(model, ...)`` to ``path`` via a temporary file renamed on success."""
    path = os.fspath(path)
    state_dict = to_torch_state_dict(model, dtype=dtype, key_names=key_names, native_buffers=native_buffers)
    tmp = f"{path}.partial"
    try:
        _torch().save(state_dict, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
