"""Small building blocks shared by the model's modules: parameters with logical axes, RMSNorm."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02  # transformers' initializer_range for MiniMax


def param(rngs: nnx.Rngs | None, shape, axes: tuple[str, ...], dtype, *, init: str = "normal") -> nnx.Param:
    """An nnx.Param carrying its logical axis names (read by m1jax.sharding's rules table)."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "normal":
        value = (INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, logical_axes=tuple(axes))


def dense(x, kernel, dtype, out_dtype=None):
    """x [..., in] @ kernel [in, out] with inputs in ``dtype`` and fp32 accumulation; output in ``out_dtype``
    (default ``dtype``).

    The backward is written out (custom_vjp) so that it, too, multiplies ``dtype`` operands with fp32
    accumulation (the output's cotangent is cast to ``dtype`` first): dx in x's dtype, d kernel in the kernel's own
    dtype (fp32 master weights get an fp32 gradient, not one rounded to ``dtype``). Left to autodiff, the fp32
    accumulator's cotangent made both backward matmuls fp32 x fp32 (TF32 on a GPU): 40 of the 1b train step's
    174 ms on an H200 (experiments/results/train_trace_1b_h200_before.md).
    """
    return _dense(x, kernel, jnp.dtype(dtype), jnp.dtype(out_dtype or dtype))


def _matmul(a, b, spec, dtype):
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x, kernel, dtype, out_dtype):
    return _matmul(x, kernel, "...i,io->...o", dtype).astype(out_dtype)


def _dense_fwd(x, kernel, dtype, out_dtype):
    # residuals: x already in the compute dtype (what autodiff would keep), the kernel as given (no copy), and
    # an empty array that remembers x's own dtype for its cotangent
    return _dense(x, kernel, dtype, out_dtype), (x.astype(dtype), kernel, jnp.zeros((0,), x.dtype))


def dense_grads(xd, kernel, x_dtype, g, dtype):
    """The backward of ``x @ kernel`` with ``dtype`` operands and fp32 accumulation: (dx in ``x_dtype``, d kernel in
    the kernel's dtype), from ``xd`` = x already in ``dtype`` and the output cotangent ``g`` (cast to ``dtype``).
    Shared by ``dense`` and the split-precision LM head (m1jax.model.head)."""
    dx = _matmul(g, kernel, "...o,io->...i", dtype).astype(x_dtype)
    dk = _matmul(xd, g, "...i,...o->io", dtype)
    return dx, dk.astype(kernel.dtype)


def _dense_bwd(dtype, out_dtype, res, g):
    del out_dtype
    xd, kernel, x_like = res
    return dense_grads(xd, kernel, x_like.dtype, g, dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


class RMSNorm(nnx.Module):
    """y = w * x / sqrt(mean(x^2) + eps), statistics in fp32, output in the input dtype."""

    def __init__(self, dim: int, eps: float, *, param_dtype, axis_name: str = "embed"):
        self.weight = param(None, (dim,), (axis_name,), param_dtype, init="ones")
        self.eps = float(eps)

    def __call__(self, x):
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(dtype) * xf.astype(dtype)
