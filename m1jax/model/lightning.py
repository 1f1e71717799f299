"""The lightning (decayed linear) attention layer of MiniMax-M1 (docs/model.md §2)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m1jax.config import ModelConfig
from m1jax.model import lightning_cp
from m1jax.model.layers import RMSNorm, dense, param
from m1jax.sharding import constrain


def _alibi_slopes(n: int) -> list[float]:
    """Per-head base rates: 2^(-8(h+1)/n) for power-of-two n, ALiBi's interleaved recipe otherwise."""
    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_two(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_two(closest) + _alibi_slopes(2 * closest)[0::2][: n - closest]


def lightning_decay(config: ModelConfig, layer: int) -> np.ndarray:
    """Decay rates s [heads] (per-step factor e^{-s}) of global layer ``layer``, as float32."""
    slopes = np.asarray(_alibi_slopes(config.num_attention_heads), np.float64)
    L = config.num_hidden_layers
    if config.decay_rule == "native":
        factor = 1 - layer / (L - 1 + 1e-5) + 1e-5
    else:  # remote code: 1 - l / (L - 1) + 1e-5 (it divides by zero at L = 1; we use 1 + 1e-5)
        factor = 1 - (layer / (L - 1) if L > 1 else 0.0) + 1e-5
    return (slopes * factor).astype(np.float32)


class LightningAttention(nnx.Module):
    """qkv = silu(x Wqkv) (per-head interleaved q|k|v), lightning attention, H*D RMSNorm, sigmoid gate."""

    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        c = config
        H, D, E = c.num_attention_heads, c.head_dim, c.hidden_size
        pd = c.jnp_param_dtype
        self.qkv_proj = param(rngs, (E, 3 * H * D), ("embed", "qkv"), pd)
        self.output_gate = param(rngs, (E, H * D), ("embed", "heads"), pd)
        self.out_proj = param(rngs, (H * D, E), ("heads", "embed"), pd)
        self.norm = RMSNorm(H * D, c.lightning_norm_eps, param_dtype=pd, axis_name="heads")
        self.num_heads, self.head_dim, self.block_size = H, D, c.block_size
        self.decay = tuple(float(s) for s in lightning_decay(c, layer))  # static, not a parameter
        self.dtype = c.jnp_dtype
        self.kernel_impl = "auto"
        # static: when the layer is differentiated, hand the kernels the interleaved q|k|v projection whole
        # (lightning_cp.lightning_attention_qkv: the GPU kernels read it and write its gradient in place; forward
        # only it runs the sliced path); False always slices q, k, v in XLA and concatenates their gradients.
        self.fused = True

    def __call__(self, x, *, segment_ids=None, state=None, pad_mask=None):
        """x [b, n, hidden] -> (y [b, n, hidden], final fp32 state [b, H, D, D]).

        ``state`` is the incoming fp32 state (decoding); with n == 1 the recurrent decode step runs.
        ``pad_mask`` [b, n] (False on left padding): padded tokens get k = v = 0, so they add nothing to
        the state (a zero state stays zero under decay) and the valid tokens see exactly their own prefix.
        """
        b, n, _ = x.shape
        H, D = self.num_heads, self.head_dim
        qkv = jax.nn.silu(dense(x, self.qkv_proj[...], self.dtype)).reshape(b, n, H, 3 * D)
        qkv = constrain(qkv, ("batch", "seq", "heads", None))  # per-head interleaved: heads split whole
        decay = jnp.asarray(self.decay, jnp.float32)
        decode = state is not None and n == 1 and segment_ids is None
        if self.fused and pad_mask is None and not decode:
            o, state = lightning_cp.lightning_attention_qkv(
                qkv, decay, initial_state=state, segment_ids=segment_ids, block_size=self.block_size,
                impl=self.kernel_impl,
            )
            return self._output(x, o), state
        q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
        if pad_mask is not None:  # where, not a product: a non-finite padded activation must not leak
            keep = pad_mask[:, :, None, None]
            k, v = jnp.where(keep, k, 0), jnp.where(keep, v, 0)
        if decode:
            o, state = lightning_cp.lightning_decode(q[:, 0], k[:, 0], v[:, 0], decay, state)
            o = o[:, None]
        else:
            o, state = lightning_cp.lightning_attention(
                q, k, v, decay, initial_state=state, segment_ids=segment_ids,
                block_size=self.block_size, impl=self.kernel_impl,
            )
        return self._output(x, o), state

    def _output(self, x, o):
        """H*D RMSNorm of o [b, n, H, D], the sigmoid gate of x, the output projection."""
        b, n = o.shape[:2]
        o = self.norm(o.reshape(b, n, -1).astype(self.dtype))
        o = jax.nn.sigmoid(dense(x, self.output_gate[...], self.dtype)) * o
        return dense(o, self.out_proj[...], self.dtype)
