"""Decode attention (one new query per row over a KV cache), dispatching between the Pallas kernels and XLA.

impl:
  "xla"    masked softmax over the whole cache in plain XLA (any device; reads all S slots of every row);
  "triton" gpu_triton.decode_attention: split-K flash decoding reading only each row's valid slots (GPU; on a CPU
           with ``interpret=True``, for tests);
  "tpu"    tpu.decode_attention: a Pallas Mosaic kernel over the cache viewed as [b, S*K, D] (all kv heads of a
           block of slots together, which meets the (8, 128) tiling without transposing the cache), reading only
           the blocks of each row's valid slots (TPU; on a CPU with ``interpret=True``, for tests). Tested in TPU
           interpret mode and its Mosaic lowering checked; never run on TPU hardware here;
  "auto"   "triton" on a GPU when the shapes suit it (head_dim a power of two >= 16, cache length a multiple of
           the block), "tpu" on a TPU when they suit it (query heads a multiple of kv heads, cache length a multiple
           of the block, block_k * kv_heads a multiple of 8), else "xla".

``block_k`` None means each kernel's default (64 slots for "triton", ``tpu.default_block_k`` for "tpu"); ``splits``
is the Triton kernel's only (the TPU kernel walks a row's blocks in one program).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels.decode_attention import gpu_triton, tpu

IMPLS = ("auto", "xla", "triton", "tpu")
TRITON_BLOCK_K = 64


def auto_impl(q_shape, k_shape, block_k: int | None = None) -> str:
    """What "auto" runs for these shapes on this backend: "triton" on a GPU and "tpu" on a TPU where the kernel's
    shape rules hold (gpu_triton.fits / tpu.fits), else "xla"."""
    backend = jax.default_backend()
    if backend == "gpu" and gpu_triton.fits(q_shape, k_shape, TRITON_BLOCK_K if block_k is None else block_k):
        return "triton"
    if backend == "tpu" and tpu.fits(q_shape, k_shape, block_k):
        return "tpu"
    return "xla"


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


def decode_attention(q, k, v, start, length, *, impl: str = "auto", block_k: int | None = None,
                     splits: int | None = None, interpret: bool = False):
    """q [b, H, D]; k, v [b, S, K, D]; start, length int [b] (row r attends to slots start[r] <= s < length[r])
    -> [b, H, D] in q's dtype."""
    if impl not in IMPLS:
        raise ValueError(f"decode attention impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = auto_impl(q.shape, k.shape, block_k)
    if impl == "xla":
        return xla_decode_attention(q, k, v, start, length)
    if impl == "tpu":
        return tpu.decode_attention(q, k, v, start, length, block_k=block_k, interpret=interpret)
    return gpu_triton.decode_attention(q, k, v, start, length, block_k=TRITON_BLOCK_K if block_k is None else block_k,
                                       splits=splits, interpret=interpret)
