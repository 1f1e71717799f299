"""Standalone Pallas kernels (imports jax only, never m1jax)."""

from pallas_kernels.lightning_attention import lightning_attention, lightning_attention_decode

__all__ = ["lightning_attention", "lightning_attention_decode"]
