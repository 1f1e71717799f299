"""pallas_kernels.grouped_matmul against a float64 numpy loop over groups.

The "xla" impl runs here directly. The "mosaic_gpu" impl's kernels (JAX's Hopper ragged_dot_mgpu /
transposed_ragged_dot_mgpu) need a GPU; here they are replaced by numpy-backed stand-ins with the same
signature that leave NaN in rows they are not meant to write, which checks everything our wrapper adds:
the custom_vjp formulas (dx with the transposed weights, dw as a per-group contraction over rows) and
the zeroing of rows past the groups. experiments/check_gpu_kernels.py checks the real kernels on a GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.grouped_matmul import grouped_matmul, ops
from tests.kernels.common import rel_err


def _numpy(x, w, sizes):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    y = np.zeros((x.shape[0], w.shape[2]))
    start = 0
    for g, s in enumerate(np.asarray(sizes)):
        y[start : start + s] = x[start : start + s] @ w[g]
        start += s
    return y


def _problem(rng, m, k, n, sizes):
    x = jnp.asarray(rng.standard_normal((m, k)) / np.sqrt(k), jnp.float32)
    w = jnp.asarray(rng.standard_normal((len(sizes), k, n)), jnp.float32)
    return x, w, jnp.asarray(sizes, jnp.int32), jnp.asarray(rng.standard_normal((m, n)), jnp.float32)


# (m, sizes): uneven groups, an empty first / middle / last group, rows past the groups, m not a multiple of 8.
CASES = [(37, [10, 0, 20, 7]), (30, [0, 25, 0, 0]), (41, [3, 9, 0, 24])]


@pytest.mark.parametrize("m, sizes", CASES)
def test_xla_impl_values_and_gradients(rng, m, sizes):
    x, w, gs, dy = _problem(rng, m, 12, 9, sizes)
    y, vjp = jax.vjp(lambda x, w: grouped_matmul(x, w, gs, impl="xla"), x, w)
    assert rel_err(y, _numpy(x, w, gs)) < 1e-6
    dx, dw = vjp(dy)
    # d/dx sum(dy * y) = grouped(dy, w^T); d/dw[g] = x_g^T dy_g.
    assert rel_err(dx, _numpy(dy, np.swapaxes(w, 1, 2), gs)) < 1e-6
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    dw_ref = np.stack([np.asarray(x, np.float64)[a:b].T @ np.asarray(dy, np.float64)[a:b]
                       for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    assert rel_err(dw, dw_ref) < 1e-6
    assert np.all(np.asarray(y)[sum(sizes):] == 0) and np.all(np.asarray(dx)[sum(sizes):] == 0)


def _fake_ragged_dot(lhs, rhs, *, group_sizes, transpose_rhs=False, **tiles):
    """Stand-in for ragged_dot_mgpu.ragged_dot: fp32 math, output in lhs.dtype, NaN past the groups."""
    assert set(tiles) == {"block_m", "block_n", "block_k", "max_concurrent_steps", "grid_block_n"}
    assert lhs.shape[0] < 8 or lhs.shape[0] % 8 == 0, "the real kernel's TMA tiling rejects this row count"
    rhs = jnp.swapaxes(rhs, 1, 2) if transpose_rhs else rhs
    y = jax.lax.ragged_dot(lhs.astype(jnp.float32), rhs.astype(jnp.float32), group_sizes)
    garbage = jnp.arange(lhs.shape[0])[:, None] >= jnp.sum(group_sizes)
    return jnp.where(garbage, jnp.nan, y).astype(lhs.dtype)


def _fake_transposed(lhs, rhs, *, group_sizes, **tiles):
    """Stand-in for transposed_ragged_dot_mgpu.transposed_ragged_dot: out[g] = lhs_g^T rhs_g."""
    assert set(tiles) == {"block_m", "block_n", "block_k", "max_concurrent_steps", "grid_block_n"}
    assert lhs.shape[0] < 8 or lhs.shape[0] % 8 == 0, "the real kernel's TMA tiling rejects this row count"
    group = jnp.searchsorted(jnp.cumsum(group_sizes), jnp.arange(lhs.shape[0]), side="right")
    onehot = jax.nn.one_hot(group, group_sizes.shape[0], dtype=jnp.float32)  # rows past the groups: all 0
    out = jnp.einsum("rg,rm,rn->gmn", onehot, lhs.astype(jnp.float32), rhs.astype(jnp.float32))
    return out.astype(lhs.dtype)


@pytest.mark.parametrize("m, sizes", CASES)
def test_mosaic_wrapper_with_stand_in_kernels(rng, monkeypatch, m, sizes):
    from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu, transposed_ragged_dot_mgpu

    monkeypatch.setattr(ragged_dot_mgpu, "ragged_dot", _fake_ragged_dot)
    monkeypatch.setattr(transposed_ragged_dot_mgpu, "transposed_ragged_dot", _fake_transposed)
    monkeypatch.setattr(ops, "_mosaic_applies", lambda x, w: True)
    x, w, gs, dy = _problem(rng, m, 16, 8, sizes)
    f = jax.jit(lambda x, w: jax.vjp(lambda x, w: grouped_matmul(x, w, gs, impl="mosaic_gpu"), x, w)[1](dy))
    y = grouped_matmul(x, w, gs, impl="mosaic_gpu")
    (dx, dw), (dx_ref, dw_ref) = f(x, w), jax.vjp(lambda x, w: grouped_matmul(x, w, gs, impl="xla"), x, w)[1](dy)
    assert rel_err(y, _numpy(x, w, gs)) < 1e-6
    assert rel_err(dx, dx_ref) < 1e-6 and rel_err(dw, dw_ref) < 1e-6


def test_auto_keeps_xla_for_few_rows(rng, monkeypatch):
    """Where the Mosaic kernel applies, "auto" runs it from MOSAIC_MIN_ROWS rows up and XLA's ragged_dot below
    (decode's few rows), with the same result either way."""
    calls, kernel = [], ops._mosaic
    monkeypatch.setattr(ops, "_mosaic_applies", lambda x, w: True)
    monkeypatch.setattr(ops, "_mosaic", lambda *a: (calls.append(a[0].shape[0]), ops._xla(*a))[1])
    monkeypatch.setattr(ops, "MOSAIC_MIN_ROWS", 16)
    for m, sizes in ((15, [5, 10]), (16, [9, 7])):
        x, w, gs, _ = _problem(rng, m, 16, 8, sizes)
        assert rel_err(grouped_matmul(x, w, gs), _numpy(x, w, gs)) < 1e-6
    assert calls == [16] and kernel is not ops._mosaic


def test_auto_is_xla_off_hopper_and_bad_input_errors(rng):
    x, w, gs, _ = _problem(rng, 8, 4, 3, [5, 3])
    assert rel_err(grouped_matmul(x, w, gs), _numpy(x, w, gs)) < 1e-6  # auto on CPU
    with pytest.raises(ValueError, match="mosaic_gpu"):
        grouped_matmul(x, w, gs, impl="mosaic_gpu")
    with pytest.raises(ValueError, match="impl"):
        grouped_matmul(x, w, gs, impl="cublas")
    with pytest.raises(ValueError, match="contracting"):
        grouped_matmul(x[:, :3], w, gs)
    with pytest.raises(ValueError, match="group_sizes"):
        grouped_matmul(x, w, gs[:1])
    with pytest.raises(TypeError, match="integer"):
        grouped_matmul(x, w, gs.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"x \[m, k\]"):
        grouped_matmul(x[None], w, gs)


SHARD_MAP_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu, transposed_ragged_dot_mgpu
from pallas_kernels.grouped_matmul import grouped_matmul, ops
from tests.kernels import test_grouped_matmul as t

ragged_dot_mgpu.ragged_dot = t._fake_ragged_dot
transposed_ragged_dot_mgpu.transposed_ragged_dot = t._fake_transposed
ops._mosaic_applies = lambda x, w: True
ops.MOSAIC_MIN_ROWS = 0  # these 48 rows would otherwise stay on XLA's ragged_dot
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("expert",))
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((2 * 24, 16)), jnp.float32)    # replicated rows
w = jnp.asarray(rng.standard_normal((2 * 3, 16, 8)), jnp.float32)  # 3 experts per device: varies over expert
gs = jnp.asarray([5, 9, 10], jnp.int32)

def loss(x, w, impl):
    f = lambda x, w: grouped_matmul(x, w, gs, impl=impl)
    y = jax.shard_map(f, mesh=mesh, in_specs=(P(), P("expert")), out_specs=P("expert"))(x, w)
    return jnp.sum(y ** 2)

got = jax.jit(jax.grad(lambda x, w: loss(x, w, "mosaic_gpu"), (0, 1)))(x, w)
want = jax.jit(jax.grad(lambda x, w: loss(x, w, "xla"), (0, 1)))(x, w)
for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

# impl="auto": the kernel inside shard_map, XLA's partitionable ragged_dot under the mesh outside it.
from m1jax.sharding import use_mesh
calls, kernel = [], ops._mosaic
ops._mosaic = lambda *a: (calls.append(1), kernel(*a))[1]
with use_mesh(mesh):
    jax.jit(lambda x, w: grouped_matmul(x, w, jnp.asarray([9, 9, 9, 9, 9, 3], jnp.int32)))(x, w)
    assert not calls
    jax.jit(jax.shard_map(lambda x, w: grouped_matmul(x, w, gs), mesh=mesh, in_specs=(P(), P("expert")),
                          out_specs=P("expert")))(x, w)
    assert calls
print("OK")
"""


def test_mosaic_wrapper_gradients_inside_shard_map():
    """Under shard_map the custom_vjp's cotangents must carry their primals' manual-axis types (a bug found
    on 2 H200s: dw came back unvarying while w varies over ``expert``); impl="auto" runs the kernel inside
    shard_map but not under automatic partitioning over several devices."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", SHARD_MAP_SCRIPT], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
