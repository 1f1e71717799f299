"""The LM head's matmul precision: M1 runs its head in fp32 (train / inference probabilities stay aligned, which
RL needs); a split-precision dot gives fp32-level accuracy at a fraction of IEEE fp32's cost on GPUs and TPUs.

``lm_head_precision`` (ModelConfig; used only with ``lm_head_dtype="float32"``):
  "highest" IEEE fp32 products (Precision.HIGHEST): exact, ~11x a bf16 head on an H200;
  "bf16x3"  each fp32 operand split into bf16 hi + lo, hi*hi + hi*lo + lo*hi with fp32 accumulation
            (DotAlgorithmPreset.BF16_BF16_F32_X3): 1.4e-5 max relative logit error (vs 2.3e-3 for a bf16 head);
            the whole head (norm, matmul, log-softmax) 2.3x a bf16 head's forward time, 1.74x forward + backward
            (experiments/results/lm_head_h200_split_bwd.md, H200). The RL default;
  "bf16x6"  six bf16 products: ~3e-6;
  "tf32"    TF32 products: ~3e-4 (JAX's DEFAULT for fp32 on GPUs); its bf16 backward is coarser than its forward.
The precision names the forward, whose probabilities are what sampler and learner must agree on. The backward of
every choice but "highest" multiplies bf16 operands with fp32 accumulation (``layers.dense_grads``, as every other
matmul of the model does): the logits' gradient is rounded to bf16, the fp32 weight's gradient stays fp32. Left to
autodiff, a bf16x3 head's backward ran two more bf16x3 products and made forward + backward 3.45x a bf16 head's
(experiments/results/lm_head_h200_after_dense_bwd.md). The gradients stay at least as close to IEEE fp32's as a bf16
head's (chunked_ce section of lm_head_h200_split_bwd.md: max |d hidden| error 2.1e-7 vs 3.5e-7, |d w| 2.2e-6 vs 4.4e-6).
"highest" keeps IEEE fp32 forward and backward for whoever needs exact gradients.
On a CPU every choice computes IEEE fp32 products, backward included (XLA:CPU ignores the bf16 algorithms and
rejects TF32), so CPU runs and tests are exact whatever is chosen.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from m1jax.config import LM_HEAD_PRECISIONS
from m1jax.model.layers import dense, dense_grads

_P = jax.lax.DotAlgorithmPreset
HEAD_PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "bf16x3": _P.BF16_BF16_F32_X3,
    "bf16x6": _P.BF16_BF16_F32_X6,
    "tf32": _P.TF32_TF32_F32,
}
assert tuple(HEAD_PRECISIONS) == LM_HEAD_PRECISIONS


def lm_head_logits(h, w, *, dtype: str = "float32", precision: str = "highest"):
    """h [..., d] (fp32 after the final norm), w [d, vocab] -> fp32 logits [..., vocab].

    ``dtype`` "float32": the products follow ``precision`` (HEAD_PRECISIONS); a 16-bit ``dtype`` multiplies in that
    dtype with fp32 accumulation (pretraining throughput), its backward too: the logits' gradient is rounded to
    that dtype for the two backward matmuls (m1jax.model.layers.dense), which autodiff ran in fp32 (TF32 on a GPU:
    6.9 of the 1b train step's 149 ms on an H200)."""
    head = jnp.dtype(dtype)
    if head != jnp.float32:
        return dense(h, w, head, jnp.float32)
    if precision not in HEAD_PRECISIONS:
        raise ValueError(f"lm_head_precision must be one of {sorted(HEAD_PRECISIONS)}, got {precision!r}")
    if precision == "highest" or jax.default_backend() == "cpu":
        return _fp32_products(h, w, jax.lax.Precision.HIGHEST)
    return split_precision_logits(h, w, precision)


def _fp32_products(h, w, prec):
    f32 = jnp.float32
    return jnp.einsum("...d,dv->...v", h.astype(f32), w.astype(f32), precision=prec, preferred_element_type=f32)


def split_precision_logits(h, w, precision: str):
    """fp32 logits whose products follow ``precision`` (a HEAD_PRECISIONS name), with the bf16-operand backward of
    ``layers.dense_grads`` (module docstring). ``lm_head_logits`` takes this path on GPUs / TPUs for every choice
    but "highest"."""
    return _split(h, w, HEAD_PRECISIONS[precision])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _split(h, w, prec):
    return _fp32_products(h, w, prec)


def _split_fwd(h, w, prec):
    return _split(h, w, prec), (h.astype(jnp.bfloat16), w, jnp.zeros((0,), h.dtype))


def _split_bwd(prec, res, g):
    del prec
    hb, w, h_like = res
    return dense_grads(hb, w, h_like.dtype, g, jnp.bfloat16)


_split.defvjp(_split_fwd, _split_bwd)
