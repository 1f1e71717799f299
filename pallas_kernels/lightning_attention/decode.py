"""Lightning attention decode: one token per sequence for a batch of independent state slots.

Per slot b and head h, with fp32 state S [dk, dv] and rate s_h:

    S <- e^{-s_h} S + k^T v,        o = q S

Every slot is independent; the step is pure bandwidth (read and write the fp32 state once,
~4 dk dv FLOPs against 8 dk dv bytes). The state is updated IN PLACE: the state input is aliased to
the state output through ``input_output_aliases``, so under ``jax.jit(..., donate_argnums=...)``
no copy of the cache is made (without donation XLA inserts one copy, as for any aliased input).

Backends:
  * ``"triton"``    Pallas with the Triton lowering (GPU). Grid (batch, heads, dv // block_v); each
                    program holds a [dk, block_v] fp32 state tile. Needs power-of-two dk and dv.
  * ``"tpu"``       Pallas Mosaic TPU. Grid (batch, heads // head_block); each program holds
                    [head_block, dk, dv] of state in VMEM. Vectors are passed as [.., dk, 1] and
                    [.., 1, dv] (fp32) so that the outer product and the reduction are plain
                    lane/sublane broadcasts.
  * ``"reference"`` ``reference.step`` (pure jnp).
  * ``"auto"``      tpu on TPU, reference (XLA's fusion) elsewhere, GPUs included: measured faster
                    than the Triton kernel side by side (below).

``interpret=True`` runs the Pallas kernels in interpret mode (CPU testing); for ``"tpu"`` it uses
``pltpu.InterpretParams()`` (TPU semantics on the CPU) where this JAX has it.

Measured on one H200 (JAX 0.11.2, H=64, D=128, fp32 state, steps in a jitted loop): triton 147 us
per step at B=64 (3.65 TB/s on state bytes), 553 us at B=256 (3.88 TB/s); XLA's fusion of
``reference.step`` is within 2-4% (150 / 577 us). Tiles (experiments/results/lightning_decode_tiles_sweep_h200.md,
unrolled fenced steps): at B64 block_v 128 with 8 warps takes 158 us against 167 us for 64 / 4 (the old default)
and 152 us for a plain copy of the state's size; at B256 591 against 607 us (64 / 8 warps 585 and 128 / 16 warps
580 were as good there); so block_v defaults to 128 (8 warps) once batch * heads * dv / 128 >= 1024 programs, 64
below (B1: 128 programs, not 64; the threshold between B1 and B64 is not measured). Errors vs
reference.step: fp32 o ~1e-7 relative, state bit-exact. The TPU kernel has only run in interpret mode.
Side by side with fla in one process (experiments/results/lightning_attention_bench_part2_h200.md,
H200, 2026-11-22, per step in a jitted loop): XLA reference.step 13.0 / 159.7 / 562 us at B 1 / 64 /
256 (79% and 90% of the 4.24 TB/s copy at B64 / B256), triton 24.0 / 175.3 / 652 us, fla
fused_recurrent 136 / 215 / 809 us per chained step. Hence "auto" -> reference on GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.lightning_attention import reference

DECODE_IMPLS = ("auto", "triton", "tpu", "reference")

# Forward implementation names (ops._IMPLS) -> decode kernel; unknown names go through "auto".
_FORWARD_TO_DECODE = {
    "reference": "reference",
    "reference_recurrent": "reference",
    "triton": "triton",
    "gpu_triton": "triton",
    "mosaic_gpu": "triton",
    "mosaic_gpu_all": "triton",
    "gpu_mosaic": "triton",
    "tpu": "tpu",
    "pallas_tpu": "tpu",
    "mosaic_tpu": "tpu",
}


def decode_impl_for(impl: str) -> str:
    """Maps a forward implementation name (or a decode name) to a decode implementation."""
    if impl in DECODE_IMPLS:
        return impl
    return _FORWARD_TO_DECODE.get(impl, "auto")


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def check_decode_inputs(q, k, v, decay, state):
    if q.ndim != 3 or k.shape != q.shape or v.ndim != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            "decode expects q, k [batch, heads, dk] and v [batch, heads, dv]; "
            f"got {q.shape}, {k.shape}, {v.shape}"
        )
    for name, x in (("q", q), ("k", k), ("v", v), ("decay", decay)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating dtype, got {x.dtype}")
    want = (*q.shape, v.shape[-1])
    if state.shape != want:
        raise ValueError(f"state must be [batch, heads, dk, dv] = {want}, got {state.shape}")
    if state.dtype != jnp.float32:
        raise TypeError(f"state must be float32 (it is updated in place), got {state.dtype}")
    if decay.shape != (q.shape[1],):
        raise ValueError(f"decay must have shape [heads] = ({q.shape[1]},), got {decay.shape}")


# ----------------------------------------------------------------------------------------------
# Triton (GPU)


def _triton_kernel(q_ref, k_ref, v_ref, d_ref, s_ref, o_ref, s_out_ref):
    # q_ref, k_ref [dk]; v_ref [bv]; d_ref [1]; s_ref, s_out_ref [dk, bv]; o_ref [bv]
    lam = jnp.exp(-d_ref[...].astype(jnp.float32))  # [1]; exponent <= 0
    q = q_ref[...].astype(jnp.float32)
    k = k_ref[...].astype(jnp.float32)
    v = v_ref[...].astype(jnp.float32)
    s = lam[:, None] * s_ref[...] + k[:, None] * v[None, :]
    s_out_ref[...] = s
    o_ref[...] = jnp.sum(q[:, None] * s, axis=0).astype(o_ref.dtype)


def _triton_params(num_warps: int):
    try:
        from jax.experimental.pallas import triton as pltriton
    except ImportError:  # pragma: no cover - jax without the Triton backend
        return None
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=1)


@functools.partial(jax.jit, static_argnames=("block_v", "num_warps", "interpret"))
def _decode_triton(q, k, v, decay, state, *, block_v=None, num_warps=None, interpret=False):
    b, h, dk = q.shape
    dv = v.shape[-1]
    if not (_is_pow2(dk) and _is_pow2(dv)):
        raise ValueError(f"the triton decode kernel needs power-of-two dk and dv, got {dk}, {dv}")
    if block_v is None:  # whole 128-column tiles once there are programs enough (module docstring)
        bv = min(dv, 128) if b * h * max(1, dv // 128) >= 1024 else min(dv, 64)
    else:
        bv = int(block_v)
    if not _is_pow2(bv) or dv % bv:
        raise ValueError(f"block_v must be a power of two dividing dv={dv}, got {bv}")
    nv = dv // bv
    if num_warps is None:
        num_warps = 4 if dk * bv <= 128 * 64 else 8
    vec = lambda blk, im: pl.BlockSpec((None, None, blk), im)  # noqa: E731
    state_spec = pl.BlockSpec((None, None, dk, bv), lambda i, j, n: (i, j, 0, n))
    return pl.pallas_call(
        _triton_kernel,
        grid=(b, h, nv),
        in_specs=[
            vec(dk, lambda i, j, n: (i, j, 0)),
            vec(dk, lambda i, j, n: (i, j, 0)),
            vec(bv, lambda i, j, n: (i, j, n)),
            pl.BlockSpec((1,), lambda i, j, n: (j,)),
            state_spec,
        ],
        out_specs=[vec(bv, lambda i, j, n: (i, j, n)), state_spec],
        out_shape=[
            jax.ShapeDtypeStruct((b, h, dv), q.dtype),
            jax.ShapeDtypeStruct(state.shape, jnp.float32),
        ],
        input_output_aliases={4: 1},
        compiler_params=None if interpret else _triton_params(num_warps),
        interpret=interpret,
        name="lightning_decode_triton",
    )(q, k, v, decay.astype(jnp.float32), state)


# ----------------------------------------------------------------------------------------------
# Mosaic TPU


def _tpu_kernel(q_ref, k_ref, v_ref, d_ref, s_ref, o_ref, s_out_ref):
    # q_ref, k_ref [hb, dk, 1]; v_ref [hb, 1, dv]; d_ref [hb, 1, 1]; s_ref [hb, dk, dv]; o_ref [hb, 1, dv]
    lam = jnp.exp(-d_ref[...])
    s = lam * s_ref[...] + k_ref[...] * v_ref[...]
    s_out_ref[...] = s
    o_ref[...] = jnp.sum(q_ref[...] * s, axis=1, keepdims=True)


def _tpu_interpret_params(interpret):
    if not interpret:
        return False
    try:
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.InterpretParams()
    except (ImportError, AttributeError):  # pragma: no cover - older jax
        return True


def _tpu_compiler_params():
    try:
        from jax.experimental.pallas import tpu as pltpu
    except ImportError:  # pragma: no cover
        return None
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))


@functools.partial(jax.jit, static_argnames=("head_block", "interpret"))
def _decode_tpu(q, k, v, decay, state, *, head_block=None, interpret=False):
    b, h, dk = q.shape
    dv = v.shape[-1]
    if head_block is None:
        # Sublane-tiled head blocks: a multiple of 8 or all heads; keep the state block <= 1 MiB.
        head_block = h
        for cand in (8, 16, 32):
            if h % cand == 0 and cand * dk * dv * 4 <= (1 << 20):
                head_block = cand
    hb = int(head_block)
    if h % hb:
        raise ValueError(f"head_block {hb} must divide heads {h}")
    f32 = jnp.float32
    q4 = q.astype(f32)[..., None]  # [b, h, dk, 1]
    k4 = k.astype(f32)[..., None]
    v4 = v.astype(f32)[:, :, None, :]  # [b, h, 1, dv]
    d3 = decay.astype(f32).reshape(h, 1, 1)
    col = pl.BlockSpec((None, hb, dk, 1), lambda i, j: (i, j, 0, 0))
    row = pl.BlockSpec((None, hb, 1, dv), lambda i, j: (i, j, 0, 0))
    st = pl.BlockSpec((None, hb, dk, dv), lambda i, j: (i, j, 0, 0))
    o4, new_state = pl.pallas_call(
        _tpu_kernel,
        grid=(b, h // hb),
        in_specs=[col, col, row, pl.BlockSpec((hb, 1, 1), lambda i, j: (j, 0, 0)), st],
        out_specs=[row, st],
        out_shape=[jax.ShapeDtypeStruct((b, h, 1, dv), f32), jax.ShapeDtypeStruct(state.shape, f32)],
        input_output_aliases={4: 1},
        compiler_params=None if interpret else _tpu_compiler_params(),
        interpret=_tpu_interpret_params(interpret),
        name="lightning_decode_tpu",
    )(q4, k4, v4, d3, state)
    return o4[:, :, 0, :].astype(q.dtype), new_state


# ----------------------------------------------------------------------------------------------


def _auto() -> str:
    backend = jax.default_backend()
    if backend == "tpu":
        return "tpu"
    return "reference"


def lightning_attention_decode(q, k, v, decay, state, *, impl: str = "auto", interpret: bool = False):
    """One decode step for a batch of independent slots.

    Args:
      q, k: [batch, heads, dk]; v: [batch, heads, dv] (any float dtype).
      decay: [heads] positive rates s (per-step factor e^{-s}).
      state: [batch, heads, dk, dv] float32, updated in place (donate it under jit).
      impl: "auto" | "triton" | "tpu" | "reference".
      interpret: run the Pallas kernel in interpret mode (CPU).

    Returns:
      (o [batch, heads, dv] in q.dtype, new fp32 state).
    """
    check_decode_inputs(q, k, v, decay, state)
    if impl not in DECODE_IMPLS:
        raise ValueError(f"impl must be one of {DECODE_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = _auto()
    if impl == "reference":
        return reference.step(q, k, v, decay, state)
    if impl == "triton":
        return _decode_triton(q, k, v, decay, state, interpret=bool(interpret))
    return _decode_tpu(q, k, v, decay, state, interpret=bool(interpret))


__all__ = ["lightning_attention_decode", "DECODE_IMPLS", "decode_impl_for", "check_decode_inputs"]
