"""Plain PyTorch state_dict (.pt / .bin) import and export, with the same name map as Hugging Face.

torch.save / torch.load hold the whole state dict at once (a format limit); loading uses
mmap=True so tensors are paged in as they are converted. Use safetensors for very large models.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np

from m1jax.config import ModelConfig
from m1jax.convert.hf import CheckpointError, export_specs, load_params
from m1jax.model import MiniMaxM1


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


def load_torch(state_dict_or_path, config: ModelConfig, **kwargs) -> MiniMaxM1:
    """A MiniMaxM1 from a torch state dict with MiniMax's original key names (see convert.names)."""
    return load_params(StateDictSource(state_dict_or_path), config, **kwargs)


def to_torch_state_dict(model: MiniMaxM1, *, dtype=None) -> dict:
    """{original key: torch.Tensor} of the model (what MiniMaxForCausalLM.load_state_dict takes)."""
    return {s.name: _from_numpy(s.produce()) for s in export_specs(model, dtype=dtype)}


def save_torch(model: MiniMaxM1, path: str | os.PathLike, *, dtype=None) -> str:
    """torch.save the state dict to ``path`` via a temporary file renamed on success."""
    path = os.fspath(path)
    tmp = f"{path}.partial"
    try:
        _torch().save(to_torch_state_dict(model, dtype=dtype), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
