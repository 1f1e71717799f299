"""Small building blocks shared by the model's modules: parameters with logical axes, RMSNorm."""

from __future__ import annotations

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


def dense(x, kernel, dtype):
    """x [..., in] @ kernel [in, out] with inputs in ``dtype`` and fp32 accumulation."""
    return jnp.einsum(
        "...i,io->...o", x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32
    ).astype(dtype)


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
