"""Standalone Pallas kernels (imports jax only, never m1jax)."""

from pallas_kernels.lightning_attention import (
    lightning_attention,
    lightning_attention_decode,
    lightning_attention_qkv,
)

__all__ = ["lightning_attention", "lightning_attention_qkv", "lightning_attention_decode"]
