"""Softmax GQA attention with partial RoPE (minimax_m1_spec.md §3)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from m1jax.config import ModelConfig
from m1jax.model.layers import dense, param
from m1jax.model.rope import apply_partial_rope, rope_cos_sin
from m1jax.sharding import constrain
from m1jax.sharding.rules import active_mesh, logical_to_spec, mesh_axes
from pallas_kernels.decode_attention import decode_attention
from pallas_kernels.decode_attention import ops as decode_ops
from pallas_kernels.segment_attention import Params as SegmentParams
from pallas_kernels.segment_attention import segment_attention
from pallas_kernels.segment_attention.reference import run_mask

DECODE_BLOCK = decode_ops.TRITON_BLOCK_K  # cache slots per block of the GPU decode kernel

# Packed rows: a segment is a maximal run of equal segment ids (how packing lays documents end to end, and how the
# lightning layers reset their state); a query sees the keys from its run's start up to itself.
# "einsum": explicit scores in XLA (any dtype, any device; the KV-cache path always uses it).
# "sdpa": jax.nn.dot_product_attention, cuDNN's fused flash attention on GPU (bf16 / fp16 only),
#         its XLA implementation elsewhere; segment ids become a [b, 1, n, n] mask.
# "segment": pallas_kernels.segment_attention, a Pallas Triton flash kernel that visits only the key blocks each
#         query tile's segments reach (GPU; interpret mode elsewhere, for tests); without segment ids it is "sdpa".
# "auto": on a GPU with bf16 / fp16 activations, "segment" for packed rows and "sdpa" (cuDNN, causal) for single
#         sequences; "einsum" otherwise.
SOFTMAX_IMPLS = ("auto", "einsum", "sdpa", "segment")
# One-token decode steps over the KV cache (pallas_kernels.decode_attention):
# "xla": the einsum path above (scores every slot of the cache);
# "triton": the split-K Pallas kernel that reads only each row's valid slots (GPU; interpret mode on a CPU);
# "tpu": the Pallas Mosaic kernel that fetches only each row's valid blocks (TPU; interpret mode on a CPU; never
#        run on TPU hardware here, see pallas_kernels/decode_attention/tpu.py);
# "auto": on one device (not under a multi-device mesh: a Pallas call is not partitioned) with 16-bit activations
#         (fp32 models keep XLA's numerics), "triton" on a GPU when head_dim is a power of two >= 16 and the cache
#         length a multiple of its block (the case measured on an H200), "tpu" on a TPU when its shapes fit;
#         else "xla".
DECODE_IMPLS = ("auto", "xla", "triton", "tpu")


class SoftmaxAttention(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        c = config
        H, K, D, E = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
        pd = c.jnp_param_dtype
        self.q_proj = param(rngs, (E, H * D), ("embed", "heads"), pd)
        self.k_proj = param(rngs, (E, K * D), ("embed", "kv_heads"), pd)
        self.v_proj = param(rngs, (E, K * D), ("embed", "kv_heads"), pd)
        self.o_proj = param(rngs, (H * D, E), ("heads", "embed"), pd)
        self.num_heads, self.num_kv_heads, self.head_dim = H, K, D
        self.rotary_dim, self.rope_theta = c.rotary_dim, c.rope_theta
        self.dtype = c.jnp_dtype
        self.impl = "auto"
        self.decode_impl = "auto"

    def __call__(self, x, *, positions, segment_ids=None, kv_cache=None, cache_index=None, kv_start=None,
                 cache_empty: bool = False):
        """x [b, n, hidden], positions [b, n] -> (y [b, n, hidden], updated (k, v) cache or None).

        Without a cache, attention is causal within ``segment_ids`` (all one segment if None).
        With ``kv_cache`` = (k, v) of [b, S, Hkv, D], the new keys are written at slot ``cache_index`` and
        queries attend to every cached slot <= their own, except row r's left padding (slots < kv_start[r]).
        ``cache_empty`` (static) says nothing was cached before these tokens: they attend among
        themselves only (cost n^2, not n x S; cuDNN's flash path on GPU), as a full forward would.
        """
        b, n, _ = x.shape
        H, K, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = dense(x, self.q_proj[...], self.dtype).reshape(b, n, H, D)
        k = dense(x, self.k_proj[...], self.dtype).reshape(b, n, K, D)
        v = dense(x, self.v_proj[...], self.dtype).reshape(b, n, K, D)
        cos, sin = rope_cos_sin(positions, self.rotary_dim, self.rope_theta)
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        # Context parallelism: queries stay split over the sequence, keys / values are all-gathered
        # (XLA derives each shard's causal offset from the global iota positions of the mask).
        q = constrain(q, ("batch", "seq", "heads", None))
        k, v = (constrain(a, ("batch", None, "kv_heads", None)) for a in (k, v))

        path = self._full_path(packed=segment_ids is not None)
        if kv_cache is None and path == "segment":
            o = _segment_kernel(*(a.astype(self.dtype) for a in (q, k, v)), segment_ids)
            return dense(o.reshape(b, n, H * D), self.o_proj[...], self.dtype), None
        if kv_cache is None and path == "sdpa":
            mask = None if segment_ids is None else run_mask(segment_ids)
            return dense(self._sdpa(q, k, v, mask).reshape(b, n, H * D), self.o_proj[...], self.dtype), None

        # Query slots [1, n], or [b, n] when the cache index is per row ([b]: continuous batching).
        q_pos = jnp.arange(n)[None, :] if cache_index is None else jnp.reshape(cache_index, (-1, 1)) + jnp.arange(n)
        new_cache = None
        if kv_cache is None:
            k_pos = q_pos
            mask = jnp.broadcast_to(q_pos[:, :, None] >= k_pos[:, None, :], (b, n, n))
            if segment_ids is not None:
                mask = mask & run_mask(segment_ids)
        else:
            ck, cv = kv_cache
            if jnp.ndim(cache_index) == 0:
                ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
                cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            else:  # each row writes at its own slot
                write = jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice(c, x, (i, 0, 0)))
                ck = write(ck, k.astype(ck.dtype), cache_index)
                cv = write(cv, v.astype(cv.dtype), cache_index)
            new_cache = (ck, cv)
            kernel = None if n != 1 or cache_empty else self.decode_kernel(q[:, 0].shape, ck.shape)
            if kernel is not None:
                start = jnp.zeros((b,), jnp.int32) if kv_start is None else kv_start
                native = {"triton": "gpu", "tpu": "tpu"}[kernel] == jax.default_backend()
                o = decode_attention(q[:, 0], ck, cv, start, jnp.broadcast_to(q_pos[:, 0] + 1, (b,)), impl=kernel,
                                     interpret=not native)
                return dense(o.reshape(b, 1, H * D), self.o_proj[...], self.dtype), new_cache
            if not cache_empty:
                k, v = ck, cv
            if cache_empty and self._full_path(packed=False) == "sdpa":
                o = self._sdpa_left_padded(q, k, v, None if kv_start is None else kv_start - q_pos[:, 0])
                return dense(o.reshape(b, n, H * D), self.o_proj[...], self.dtype), new_cache
            k_pos = q_pos if cache_empty else jnp.arange(ck.shape[1])[None, :]
            mask = jnp.broadcast_to(q_pos[:, :, None] >= k_pos[:, None, :], (b, n, k_pos.shape[-1]))
            if kv_start is not None:  # left padding is never a key (a padding query sees itself: no empty row)
                valid = k_pos >= kv_start[:, None]
                mask = mask & (valid[:, None, :] | (q_pos[:, :, None] == k_pos[:, None, :]))

        qg = q.reshape(b, n, K, H // K, D)  # kv head g serves q heads g*G .. (g+1)*G - 1
        scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k.astype(self.dtype), preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(D)
        scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1)
        o = jnp.einsum("bkgqs,bskd->bqkgd", probs.astype(self.dtype), v.astype(self.dtype),
                       preferred_element_type=jnp.float32)
        o = o.reshape(b, n, H * D).astype(self.dtype)
        return dense(o, self.o_proj[...], self.dtype), new_cache

    def decode_kernel(self, q_shape, cache_shape) -> str | None:
        """The Pallas kernel a one-token decode step over a cache of ``cache_shape`` [b, S, K, D] runs ("triton" or
        "tpu"), or None for the XLA path (see DECODE_IMPLS)."""
        if self.decode_impl not in DECODE_IMPLS:
            raise ValueError(f"softmax attention decode_impl must be one of {DECODE_IMPLS}, got {self.decode_impl!r}")
        if self.decode_impl != "auto":
            return None if self.decode_impl == "xla" else self.decode_impl
        mesh = active_mesh()
        if (mesh is not None and mesh.size > 1) or self.dtype not in (jnp.bfloat16, jnp.float16):
            return None
        kernel = decode_ops.auto_impl(q_shape, cache_shape)
        return None if kernel == "xla" else kernel

    def _cudnn(self) -> bool:
        """cuDNN's fused attention applies: a GPU and 16-bit activations."""
        return jax.default_backend() == "gpu" and self.dtype in (jnp.bfloat16, jnp.float16)

    def _full_path(self, *, packed: bool) -> str:
        """The attention path over the new tokens themselves (SOFTMAX_IMPLS): "segment" (packed rows only; the
        Pallas kernel needs a power-of-two head dim in [16, 256] when "auto" picks it), "sdpa" or "einsum"."""
        if self.impl not in SOFTMAX_IMPLS:
            raise ValueError(f"softmax attention impl must be one of {SOFTMAX_IMPLS}, got {self.impl!r}")
        impl = self.impl
        if impl == "auto":
            if not self._fused_auto():
                return "einsum"
            d = self.head_dim
            impl = "segment" if packed and 16 <= d <= 256 and d & (d - 1) == 0 else "sdpa"
        return "sdpa" if impl == "segment" and not packed else impl

    def _fused_auto(self) -> bool:
        """cuDNN / Pallas apply: a GPU, 16-bit activations, and no context parallelism (the einsum path is the one
        that splits the sequence; a Pallas call is not partitioned)."""
        mesh = active_mesh()
        split_seq = mesh is not None and mesh_axes(logical_to_spec(("seq",), mesh=mesh)[0])
        return self._cudnn() and not split_seq

    def _sdpa_left_padded(self, q, k, v, pad):
        """Causal attention among n new tokens of which the first ``pad[r]`` of row r are left padding (never keys),
        without an [n, n] mask: each row is rotated left by its padding, so its tokens sit at [0, n - pad) in their
        order (rotary phases travel with them), attention runs with key_value_seq_lengths = n - pad (cuDNN's
        padding mask: no mask tensor; a padded query, now at the end, sees every valid key) and the output is
        rotated back. The mask it replaces was n^2 bools per row (4 GiB for a 64K prompt), plus cuDNN's bias."""
        if pad is None:
            return self._sdpa(q, k, v)
        n = q.shape[1]
        pad = jnp.clip(pad, 0, n - 1).astype(jnp.int32)  # an all-padding row keeps one "key": no empty softmax
        ar = jnp.arange(n)
        take = lambda a, idx: jnp.take_along_axis(a, idx[:, :, None, None], axis=1)  # noqa: E731
        left = (ar[None, :] + pad[:, None]) % n
        o = self._sdpa(take(q, left), take(k, left), take(v, left), kv_lengths=n - pad)
        return take(o, (ar[None, :] - pad[:, None]) % n)

    def _sdpa(self, q, k, v, mask=None, kv_lengths=None):
        """Causal attention (and ``mask`` [b, n, s], or keys [0, kv_lengths[r]) of row r, if given) through
        jax.nn.dot_product_attention: [b, n, H, D]."""
        return jax.nn.dot_product_attention(
            q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
            mask=None if mask is None else mask[:, None], scale=1.0 / math.sqrt(self.head_dim), is_causal=True,
            key_value_seq_lengths=kv_lengths, implementation="cudnn" if self._cudnn() else "xla",
        )


def _segment_kernel(q, k, v, segment_ids):
    """pallas_kernels.segment_attention on the ambient mesh: inside ``shard_map`` over batch and heads (XLA cannot
    split a Pallas call). Where the kv heads do not shard like the query heads (fewer kv heads than the head axis'
    devices), each kv head is repeated for its query heads first, so every shard holds whole GQA groups and the
    query heads stay split (the repeat's gradient sums back)."""
    params = SegmentParams(interpret=jax.default_backend() != "gpu")
    mesh = active_mesh()
    if mesh is None or mesh.size == 1:
        return segment_attention(q, k, v, segment_ids, params=params)
    qs = logical_to_spec(("batch", None, "heads", None), q.shape, mesh)
    ks = logical_to_spec(("batch", None, "kv_heads", None), k.shape, mesh)
    if qs[2] != ks[2]:
        group = q.shape[2] // k.shape[2]
        k, v = (jnp.repeat(a, group, axis=2) for a in (k, v))
        ks = qs
    return jax.shard_map(lambda q, k, v, s: segment_attention(q, k, v, s, params=params), mesh=mesh,
                         in_specs=(qs, ks, ks, P(qs[0], None)), out_specs=qs, check_vma=False)(q, k, v, segment_ids)
