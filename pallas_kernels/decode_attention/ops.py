"""Decode attention (one new query per row over a KV cache), dispatching between the split-K Pallas kernel and XLA.

impl:
  "xla"    masked softmax over the whole cache in plain XLA (any device; reads all S slots of every row);
  "triton" gpu_triton.decode_attention: split-K flash decoding reading only each row's valid slots (GPU; on a CPU
           with ``interpret=True``, for tests);
  "auto"   "triton" on a GPU when the shapes suit it (head_dim a power of two >= 16, cache length a multiple of
           the block), else "xla". TPU runs "xla": our cache layout [b, S, K, D] does not meet Mosaic TPU's
           (8, 128) block tiling per kv head without a transposed cache (not done).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels.decode_attention import gpu_triton

IMPLS = ("auto", "xla", "triton")


def _triton_fits(q, k, block_k: int) -> bool:
    D, S = q.shape[-1], k.shape[1]
    return D >= 16 and not D & (D - 1) and S % block_k == 0


def xla_decode_attention(q, k, v, start, length):
    """The XLA path: fp32 scores from operands in q's dtype, probabilities rounded to q's dtype for the value
    product (the model's einsum path at n = 1)."""
    b, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    qg = q.reshape(b, K, H // K, D)
    s = jnp.einsum("bkgd,bskd->bkgs", qg, k.astype(q.dtype), preferred_element_type=jnp.float32) / math.sqrt(D)
    pos = jnp.arange(S)[None, :]
    valid = (pos >= jnp.reshape(start, (-1, 1))) & (pos < jnp.reshape(length, (-1, 1)))
    s = jnp.where(valid[:, None, None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bkgs,bskd->bkgd", p.astype(q.dtype), v.astype(q.dtype), preferred_element_type=jnp.float32)
    return o.reshape(b, H, D).astype(q.dtype)


def decode_attention(q, k, v, start, length, *, impl: str = "auto", block_k: int = 64, splits: int | None = None,
                     interpret: bool = False):
    """q [b, H, D]; k, v [b, S, K, D]; start, length int [b] (row r attends to slots start[r] <= s < length[r])
    -> [b, H, D] in q's dtype."""
    if impl not in IMPLS:
        raise ValueError(f"decode attention impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "triton" if jax.default_backend() == "gpu" and _triton_fits(q, k, block_k) else "xla"
    if impl == "xla":
        return xla_decode_attention(q, k, v, start, length)
    return gpu_triton.decode_attention(q, k, v, start, length, block_k=block_k, splits=splits, interpret=interpret)
