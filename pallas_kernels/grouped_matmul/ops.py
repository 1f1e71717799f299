"""Grouped (ragged) matmul for MoE experts, differentiable, with a fast Hopper path.

    grouped_matmul(x [m, k], w [G, k, n], group_sizes [G]) -> [m, n] in x.dtype (fp32 accumulation)

Rows of ``x`` are sorted by group: rows [s_g, s_g + group_sizes[g]) are multiplied by ``w[g]``, where
s_g = sum(group_sizes[:g]). Rows at or past sum(group_sizes) give zeros (expert parallelism parks the
pairs that other devices handle there). The reference is ``jax.lax.ragged_dot``.

impl:
  * "xla": jax.lax.ragged_dot with fp32 accumulation; JAX differentiates it. Any backend and dtype.
  * "mosaic_gpu": JAX's Pallas Mosaic GPU kernels for Hopper (jax.experimental.pallas.ops.gpu):
    the forward and dx (= dy w[g]^T, the same kernel reading w transposed) are ``ragged_dot_mgpu``,
    dw[g] = x_g^T dy_g (a contraction over each group's rows) is ``transposed_ragged_dot_mgpu``, tied
    together by a custom_vjp. bf16 / fp16 only; k and n multiples of 128.
  * "auto": "mosaic_gpu" where it applies (a compute capability 9.x GPU, 16-bit inputs, k and n
    multiples of 128), pays (at least MOSAIC_MIN_ROWS rows) and no automatic multi-device partitioning is in
    effect (single device, or inside shard_map), else "xla".
Why: on an H200 (jax 0.11.2) XLA's ragged_dot ran [16384, 2048] x [8, 2048, 2816] at 89 TFLOP/s, the
Mosaic kernel at 341 and a dense matmul of the same FLOPs at 450 (experiments/results/
train_profile_1b_h200_before.md); the MoE was 85% of the 1b preset's train step. At decode's few rows it is the
other way round: the 1b MoE block (8 experts top-2, one token per row) took 187 / 176 us with the Mosaic kernel
against 103 / 120 us with ragged_dot at 2 / 32 rows, and 120 against 151 us at 128 rows (H200, one fori_loop
per case; experiments/results/profile_decode_h200.md); hence MOSAIC_MIN_ROWS.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "mosaic_gpu")

# Tiles of the Mosaic kernels (a 128 x 128 fp32 accumulator per warpgroup, 64-wide k steps, 5 stages in flight:
# 160 KB of SMEM). Swept on an H200 at the 1b MoE shapes (experiments/results/grouped_matmul_tiles_h200.md): 5 stages
# took the layer's six expert matmuls (fwd, dx, dw of up x 2 and down) from 4.70 to 4.31 ms against 4 stages; 3 stages,
# 128-wide k steps, 256-row or 256-column tiles and other grid_block_n were slower or did not compile. The 1b train
# step (profile_train, segment attention): 133.1 -> 131.8 ms
# (experiments/results/train_profile_1b_segment_5stages_h200.md).
_FWD = dict(block_m=128, block_n=128, block_k=64, max_concurrent_steps=5, grid_block_n=2)
_DW = dict(block_m=128, block_n=128, block_k=64, max_concurrent_steps=5, grid_block_n=2)
_ALIGN = 128
_ROW_TILE = 8
MOSAIC_MIN_ROWS = 128  # "auto" keeps XLA's ragged_dot below this many rows (decode; see the module doc)


def _check(x, w, group_sizes):
    if x.ndim != 2 or w.ndim != 3:
        raise ValueError(f"grouped_matmul needs x [m, k] and w [groups, k, n], got {x.shape} and {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"contracting dims differ: x {x.shape} vs w {w.shape}")
    if group_sizes.shape != (w.shape[0],):
        raise ValueError(f"group_sizes must be [groups] = ({w.shape[0]},), got {group_sizes.shape}")
    if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise TypeError(f"group_sizes must be integer, got {group_sizes.dtype}")
    for name, a in (("x", x), ("w", w)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating dtype, got {a.dtype}")


def _mosaic_applies(x, w) -> bool:
    if jax.default_backend() != "gpu":
        return False
    cc = str(getattr(jax.devices()[0], "compute_capability", "") or "")
    return (cc.split(".")[0] == "9" and x.dtype == w.dtype and x.dtype in (jnp.bfloat16, jnp.float16)
            and x.shape[1] % _ALIGN == 0 and w.shape[2] % _ALIGN == 0)


def _under_auto_partitioning() -> bool:
    """True when XLA's SPMD partitioner splits this computation over several devices (an ambient mesh with
    non-manual axes, i.e. outside shard_map): it partitions ragged_dot, whereas a Pallas call's inputs
    would be gathered to every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    auto = [n for n, t in zip(mesh.axis_names, mesh.axis_types, strict=True) if t != jax.sharding.AxisType.Manual]
    return math.prod(mesh.shape[n] for n in auto) > 1


def _xla(x, w, group_sizes):
    return jax.lax.ragged_dot(x, w.astype(x.dtype), group_sizes, preferred_element_type=jnp.float32).astype(x.dtype)


def _valid_rows(m, group_sizes):
    return (jnp.arange(m) < jnp.sum(group_sizes))[:, None]


def _pad_rows(a):
    """The kernels' TMA tiling needs the row count to be < 8 or a multiple of 8: pad with zero rows
    (they lie past the groups, so they change nothing)."""
    m = a.shape[0]
    return a if m < _ROW_TILE or m % _ROW_TILE == 0 else jnp.pad(a, ((0, -m % _ROW_TILE), (0, 0)))


# Under jit, every call site of the same shapes lowers to ONE function (JAX caches the lowering of a
# nested jit): a 16-layer model otherwise lowered its 9 * 16 identical Mosaic kernels one by one (~1 s each).
@functools.partial(jax.jit, static_argnames="transpose_rhs")
def _mgpu_fwd_kernel(x, w, group_sizes, transpose_rhs=False):
    from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu

    m = x.shape[0]
    y = ragged_dot_mgpu.ragged_dot(_pad_rows(x), w, group_sizes=group_sizes, transpose_rhs=transpose_rhs, **_FWD)
    return jnp.where(_valid_rows(m, group_sizes), y[:m], 0)  # rows past the groups are never written


@jax.custom_vjp
def _mosaic(x, w, group_sizes):
    return _mgpu_fwd_kernel(x, w, group_sizes)


def _mosaic_fwd(x, w, group_sizes):
    return _mgpu_fwd_kernel(x, w, group_sizes), (x, w, group_sizes)


@jax.jit
def _mgpu_dw_kernel(x, dy, group_sizes):
    from jax.experimental.pallas.ops.gpu import transposed_ragged_dot_mgpu

    return transposed_ragged_dot_mgpu.transposed_ragged_dot(_pad_rows(x), _pad_rows(dy), group_sizes=group_sizes,
                                                            **_DW)


def _mosaic_bwd(res, dy):
    x, w, group_sizes = res
    dy = dy.astype(x.dtype)
    dx = _mgpu_fwd_kernel(dy, w, group_sizes, transpose_rhs=True)
    dw = _mgpu_dw_kernel(x, dy, group_sizes)
    return _like(dx, x), _like(dw.astype(w.dtype), w), None


def _like(ct, primal):
    """Inside shard_map a cotangent must vary over exactly the manual mesh axes its primal varies over, but
    a Pallas call's output is typed by its own inputs: sum it over axes the primal is invariant on (the
    transpose of the implicit broadcast, as JAX's autodiff does) and mark it varying over the others."""
    want, have = _varying_axes(primal), _varying_axes(ct)
    if extra := tuple(sorted(have - want)):
        ct = jax.lax.psum(ct, extra)
    if missing := tuple(sorted(want - have)):
        ct = jax.lax.pcast(ct, missing, to="varying") if hasattr(jax.lax, "pcast") else jax.lax.pvary(ct, missing)
    return ct


def _varying_axes(x) -> frozenset:
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # JAX 0.10 - 0.11; older JAX named it ``vma``
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


_mosaic.defvjp(_mosaic_fwd, _mosaic_bwd)


@functools.partial(jax.named_call, name="grouped_matmul")
def grouped_matmul(x, w, group_sizes, *, impl: str = "auto"):
    """x [m, k] rows sorted by group, w [G, k, n], group_sizes [G] ints -> [m, n] in x.dtype (see module doc)."""
    _check(x, w, group_sizes)
    if impl not in IMPLS:
        raise ValueError(f"grouped_matmul impl must be one of {IMPLS}, got {impl!r}")
    group_sizes = group_sizes.astype(jnp.int32)
    if impl == "auto":
        pays = x.shape[0] >= MOSAIC_MIN_ROWS
        impl = "mosaic_gpu" if pays and _mosaic_applies(x, w) and not _under_auto_partitioning() else "xla"
    elif impl == "mosaic_gpu" and not _mosaic_applies(x, w):
        raise ValueError(f"impl='mosaic_gpu' needs a Hopper GPU, equal 16-bit dtypes and k, n multiples of "
                         f"{_ALIGN}; got x {x.shape} {x.dtype}, w {w.shape} {w.dtype} on {jax.default_backend()}")
    return _mosaic(x, w, group_sizes) if impl == "mosaic_gpu" else _xla(x, w, group_sizes)
