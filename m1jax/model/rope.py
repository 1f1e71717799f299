"""Partial rotary position embedding (MiniMax: only dims [0, rotary_dim) of each head rotate)."""

from __future__ import annotations

import jax.numpy as jnp


def rope_cos_sin(positions, rotary_dim: int, theta: float):
    """positions [b, n] int -> cos, sin [b, n, rotary_dim // 2] in fp32."""
    half = rotary_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq[:half]
    return jnp.cos(angles), jnp.sin(angles)


def apply_partial_rope(x, cos, sin):
    """x [b, n, heads, head_dim]; rotates the first 2 * cos.shape[-1] dims, half-split (neox) pairing.

    Pair i is (i, i + rotary_dim / 2); the remaining head_dim - rotary_dim dims pass through.
    """
    rd = 2 * cos.shape[-1]
    dtype = x.dtype
    rot, rest = x[..., :rd].astype(jnp.float32), x[..., rd:]
    x1, x2 = rot[..., : rd // 2], rot[..., rd // 2 :]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    rotated = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(dtype)
    return jnp.concatenate([rotated, rest], axis=-1)
