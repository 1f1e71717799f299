"""The warp-specialised Mosaic GPU forward (gpu_mosaic_ws.py) on a CPU.

As test_gpu_mosaic.py: the kernel runs in JAX's GPU interpret mode (JAX >= 0.11; three simulated warpgroups
with their mbarriers; the interpreter also fails a kernel that leaves a barrier phase unobserved by one of
its waiters) against the fp32 reference on the same bf16 inputs and against gpu_mosaic's forward (same
roundings: equal to ~1e-6), and ``test_lowers_for_hopper`` exports it for CUDA on the CPU (Mosaic GPU's
Python lowering passes and its SMEM count). Skipped on JAX 0.10.x (CI's pin), except the SMEM count and
the argument checks, which run no kernel.

The interpret-mode runs happen in a subprocess with XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false:
the interpreter runs each simulated warpgroup as a host computation whose barrier waits block inside host
callbacks, and with XLA's default CPU scheduler these callbacks share a pool of one thread per core; on a
2-core host the two compute warpgroups' waits take the whole pool and the memory warpgroup never runs (a hang
of the interpreter, not of the kernel). The flag only acts when set before the CPU client starts, hence the
subprocess (with a timeout, so a real barrier mistake fails instead of hanging).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.lightning_attention import reference
from tests.kernels.common import rel_err as _rel_err
from tests.kernels.test_gpu_mosaic import DECAY, H, _f32, _inputs, needs_gpu_interpret

SMEM_LIMIT = 227 * 1024  # H100 / H200: dynamic SMEM per CTA


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERIAL_CALLBACKS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _isolated(check, *args, timeout=300):
    """Runs ``check(*args)`` (a function of this module) in a fresh interpreter with SERIAL_CALLBACKS."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SERIAL_CALLBACKS).strip()
    code = f"import numpy as np; from tests.kernels import test_gpu_mosaic_ws as m; m.{check}(*{args!r})"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]


def _check_forward(t, dk, init, seed=0):
    import numpy as np

    from pallas_kernels.lightning_attention import gpu_mosaic_ws

    q, k, v, s0 = _inputs(np.random.default_rng(seed), 1, t, dk, 64)
    s0 = s0 if init else None
    o, st = gpu_mosaic_ws.lightning_attention_fwd_ws(q, k, v, DECAY, initial_state=s0, interpret=True)
    o_ref, st_ref = jax.jit(reference.quadratic)(*_f32(q, k, v), DECAY, initial_state=s0)
    assert o.dtype == jnp.bfloat16 and st.dtype == jnp.float32
    assert o.shape == o_ref.shape and st.shape == st_ref.shape
    errs = _rel_err(o, o_ref), _rel_err(st, st_ref)
    assert max(errs) < 2e-2, errs  # tolerance as test_gpu_mosaic (bf16 operands and o: a few 1e-3)


def _check_matches_gpu_mosaic(num_slots, seed=0):
    import numpy as np

    from pallas_kernels.lightning_attention import gpu_mosaic, gpu_mosaic_ws

    q, k, v, s0 = _inputs(np.random.default_rng(seed), 1, 5 * 64, 64, 128)
    o, st = gpu_mosaic_ws.lightning_attention_fwd_ws(q, k, v, DECAY, initial_state=s0, interpret=True,
                                                     num_slots=num_slots)
    o_m, st_m = gpu_mosaic.lightning_attention_fwd(q, k, v, DECAY, initial_state=s0, interpret=True)
    errs = _rel_err(o, o_m), _rel_err(st, st_m)
    assert max(errs) <= 1e-6, errs


@needs_gpu_interpret
@pytest.mark.parametrize(
    "t,dk,init",
    [(5 * 64 + 37, 128, True), (6 * 64, 64, False), (37, 64, True)],
    ids=["5blocks+tail-dk128-s0", "6blocks-dk64", "tail-only-s0"],
)
def test_forward_interpret(t, dk, init):
    """vs the fp32 reference: >= 5 blocks wrap the slot ring and the oi double buffer; a tail of T % 64 runs in
    the reference from the kernel's final state."""
    _isolated("_check_forward", t, dk, init)


@needs_gpu_interpret
@pytest.mark.parametrize("num_slots", [2, 3])
def test_matches_gpu_mosaic(num_slots):
    """Same operations and roundings as gpu_mosaic's default step: equal up to ~1e-6 (dv = 2 value tiles)."""
    _isolated("_check_matches_gpu_mosaic", num_slots)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"num_slots": 4}, "num_slots must be 2 or 3, got 4"), ({"block_size": 32}, "block_size=64 only")],
)
def test_validation(kwargs, match):
    pytest.importorskip("jax.experimental.pallas.mosaic_gpu")
    from pallas_kernels.lightning_attention import gpu_mosaic_ws

    x = jnp.zeros((1, 64, H, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match=match):
        gpu_mosaic_ws.lightning_attention_fwd_ws(x, x, x, DECAY, interpret=True, **kwargs)


def test_smem_bytes():
    """dk = 128: 2 and 3 slots fit an H100 / H200 CTA, 4 would not (hence num_slots in {2, 3})."""
    pytest.importorskip("jax.experimental.pallas.mosaic_gpu")
    from pallas_kernels.lightning_attention import gpu_mosaic_ws

    assert gpu_mosaic_ws.smem_bytes(128) == 175240
    assert gpu_mosaic_ws.smem_bytes(128, 3) == 216232 <= SMEM_LIMIT < gpu_mosaic_ws.smem_bytes(128, 4)


@needs_gpu_interpret
@pytest.mark.parametrize("dk,num_slots,init", [(128, 2, True), (128, 3, False), (64, 2, True)])
def test_lowers_for_hopper(monkeypatch, dk, num_slots, init):
    """Exports the forward for CUDA on the CPU: Mosaic GPU's Python passes (layout and transform inference,
    wgmma / TMA lowering, the three-warpgroup body) accept the kernel, and its dynamic SMEM is ``smem_bytes``.
    (PTX compilation, register allocation and any hang happen only on a GPU.)"""
    from jax.experimental.mosaic.gpu import core as mgpu_core

    from pallas_kernels.lightning_attention import gpu_mosaic_ws

    sizes = []
    patched = hasattr(mgpu_core, "_smem_tree_size")  # a private helper: the SMEM check only where it exists
    if patched:
        tree_size = mgpu_core._smem_tree_size
        monkeypatch.setattr(mgpu_core, "_smem_tree_size", lambda tree: sizes.append(tree_size(tree)) or sizes[-1])
    b, t, h = 1, 5 * 64, 2
    x = jax.ShapeDtypeStruct((b, t, h, dk), jnp.bfloat16)

    def fwd(q, k, v, decay, s0):
        return gpu_mosaic_ws.lightning_attention_fwd_ws(q, k, v, decay, initial_state=s0 if init else None,
                                                        num_slots=num_slots)

    jax.export.export(jax.jit(fwd), platforms=["cuda"])(
        x, x, x, jax.ShapeDtypeStruct((h,), jnp.float32), jax.ShapeDtypeStruct((b, h, dk, dk), jnp.float32)
    )
    if patched:
        assert sizes == [gpu_mosaic_ws.smem_bytes(dk, num_slots)]
        assert sizes[0] <= SMEM_LIMIT
