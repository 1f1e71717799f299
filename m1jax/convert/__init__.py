"""Checkpoint conversion between m1jax and Hugging Face / PyTorch."""

from m1jax.convert.hf import CheckpointError, load_hf, save_hf
from m1jax.convert.safetensors_io import SafetensorsError

__all__ = ["CheckpointError", "SafetensorsError", "load_hf", "save_hf"]
