"""ops impl "mosaic_gpu" (Mosaic GPU Hopper forward + Triton backward) on a CPU, and impl selection.

The kernel tests run the Mosaic GPU forward in JAX's GPU interpret mode (``plgpu.InterpretGPUParams``,
JAX >= 0.11) and the Triton backward in interpret mode, against the fp32 jnp reference on the same
bf16-rounded inputs; ``test_lowers_for_hopper`` exports the forward for CUDA on the CPU (Mosaic GPU's
Python lowering passes). On JAX 0.10.x (CI's pin) they are skipped: that JAX has no GPU interpret mode and
a different Mosaic GPU API. The impl-selection, smem_bytes and argument-validation tests run everywhere
(the last two import gpu_mosaic but run no kernel).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.lightning_attention import ops, reference
from tests.kernels.common import rel_err as _rel_err


def _has_gpu_interpret() -> bool:
    try:
        from jax.experimental.pallas import mosaic_gpu as plgpu
    except ImportError:
        return False
    return hasattr(plgpu, "InterpretGPUParams")


needs_gpu_interpret = pytest.mark.skipif(
    not _has_gpu_interpret(),
    reason=f"JAX {jax.__version__} has no Mosaic GPU interpret mode (plgpu.InterpretGPUParams, JAX >= 0.11); "
    "the Mosaic GPU kernel is checked on a GPU by experiments/check_gpu_kernels.py",
)

H = 2
DECAY = jnp.array([0.05, 0.7], jnp.float32)


def _inputs(rng, b, t, dk, dv, dtype=jnp.bfloat16):
    q = jnp.asarray(rng.standard_normal((b, t, H, dk)) / dk**0.5, jnp.float32).astype(dtype)
    k = jnp.asarray(rng.standard_normal((b, t, H, dk)) / dk**0.5, jnp.float32).astype(dtype)
    v = jnp.asarray(rng.standard_normal((b, t, H, dv)), jnp.float32).astype(dtype)
    s0 = jnp.asarray(rng.standard_normal((b, H, dk, dv)), jnp.float32)
    return q, k, v, s0


def _f32(*xs):
    return tuple(None if x is None else x.astype(jnp.float32) for x in xs)


def _value_and_grads(fn, q, k, v, s0, do, dst):
    def f(q, k, v, s0):
        return fn(q, k, v, DECAY, initial_state=s0, return_state=True)

    out, vjp = jax.vjp(f, q, k, v, s0)
    return out, vjp((do, dst))


# ------------------------------------------------------------------------------------- selection


class _FakeDevice:
    def __init__(self, cc):
        self.compute_capability = cc


@pytest.mark.parametrize(
    "cc,version,want",
    [
        ("9.0", (0, 11, 2), "mosaic_gpu_all"),  # H100 / H200
        ("9.0", (0, 10, 2), "triton"),  # Mosaic GPU API of 0.10 differs from the kernel's
        ("8.0", (0, 11, 2), "triton"),  # A100: no wgmma
        ("10.0", (0, 11, 2), "triton"),  # Blackwell: no wgmma either
        ("", (0, 11, 2), "triton"),
    ],
)
def test_auto_impl_on_gpu(monkeypatch, cc, version, want):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *a, **k: [_FakeDevice(cc)])
    monkeypatch.setattr(jax, "__version_info__", version)
    assert ops._auto_impl() == want


def test_mosaic_gpu_registered_and_not_imported_by_default():
    """``import pallas_kernels`` and CPU dispatch never import gpu_mosaic (or gpu_triton)."""
    code = (
        "import sys, jax, jax.numpy as jnp, pallas_kernels\n"
        "from pallas_kernels.lightning_attention import ops\n"
        "assert 'mosaic_gpu' in ops.IMPLS, ops.IMPLS\n"
        "x = jnp.ones((1, 8, 1, 4))\n"
        "pallas_kernels.lightning_attention(x, x, x, jnp.ones((1,)))\n"
        "bad = [m for m in sys.modules if m.startswith('pallas_kernels') and 'gpu_' in m]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


# --------------------------------------------------------------------------------------- kernels


@needs_gpu_interpret
def test_forward_interpret(rng):
    """Mosaic GPU forward (whole blocks in the kernel + a 37-token tail), initial state, dv = 2 tiles."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    q, k, v, s0 = _inputs(rng, 1, 2 * 64 + 37, 64, 128)
    assert gpu_mosaic.unsupported_reason(q, k, v, DECAY, s0) is None  # the kernel path, no fallback
    fn = functools.partial(ops.lightning_attention, impl="mosaic_gpu", interpret=True, return_state=True)
    o, st = jax.jit(fn)(q, k, v, DECAY, initial_state=s0)
    o_ref, st_ref = jax.jit(reference.quadratic)(*_f32(q, k, v), DECAY, initial_state=s0)
    assert o.dtype == jnp.bfloat16 and st.dtype == jnp.float32
    assert o.shape == o_ref.shape and st.shape == st_ref.shape
    # bf16 operands (P, K * decay, the bf16 copy of the state) and a bf16 o: a few 1e-3 (2.4e-3 /
    # 9e-4 measured in the same interpret mode); a wrong mask or decay gives O(1).
    assert _rel_err(o, o_ref) < 2e-2
    assert _rel_err(st, st_ref) < 2e-2


@needs_gpu_interpret
def test_forward_backward_interpret(rng):
    """fwd + bwd of impl="mosaic_gpu" (Mosaic forward, Triton backward) vs the reference's VJP in fp32."""
    t, dk, dv = 128, 64, 64
    q, k, v, s0 = _inputs(rng, 1, t, dk, dv)
    do = jnp.asarray(rng.standard_normal((1, t, H, dv)), jnp.float32).astype(jnp.bfloat16)
    dst = jnp.asarray(rng.standard_normal((1, H, dk, dv)), jnp.float32)
    kern = functools.partial(ops.lightning_attention, impl="mosaic_gpu", interpret=True)
    (o, st), got = jax.jit(functools.partial(_value_and_grads, kern))(q, k, v, s0, do, dst)
    ref = functools.partial(reference.chunked, block_size=64)

    def ref_fn(q, k, v, decay, *, initial_state, return_state):
        del return_state
        return ref(q, k, v, decay, initial_state=initial_state)

    (o_ref, st_ref), want = jax.jit(functools.partial(_value_and_grads, ref_fn))(*_f32(q, k, v), s0, *_f32(do), dst)
    for name, g, w, dt in zip(
        ("o", "state", "dq", "dk", "dv", "ds0"),
        (o, st, *got),
        (o_ref, st_ref, *want),
        (jnp.bfloat16, jnp.float32, jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, jnp.float32),
        strict=True,
    ):
        assert g.shape == w.shape and g.dtype == dt, name
        assert _rel_err(g, w) < 3e-2, (name, _rel_err(g, w))


@needs_gpu_interpret
@pytest.mark.parametrize("case", ["fp32", "segments"])
def test_fallback_to_triton(rng, case):
    """Where the Mosaic forward does not apply, impl="mosaic_gpu" is exactly impl="triton"."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    t = 40
    dtype = jnp.float32 if case == "fp32" else jnp.bfloat16
    q, k, v, s0 = _inputs(rng, 1, t, 64, 64, dtype)
    seg = jnp.asarray((np.arange(t) >= 23)[None].astype(np.int32)) if case == "segments" else None
    assert gpu_mosaic.unsupported_reason(q, k, v, DECAY, s0, seg) is not None

    def run(impl):
        f = functools.partial(ops.lightning_attention, impl=impl, interpret=True, block_size=16)
        loss = lambda q, s0: jnp.sum(f(q, k, v, DECAY, initial_state=s0, segment_ids=seg).astype(jnp.float32))  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(q, s0)

    (val, (dq, ds0)), (val_t, (dq_t, ds0_t)) = run("mosaic_gpu"), run("triton")
    np.testing.assert_array_equal(val, val_t)
    np.testing.assert_array_equal(np.asarray(dq, np.float32), np.asarray(dq_t, np.float32))
    np.testing.assert_array_equal(ds0, ds0_t)


# ------------------------------------------------------------ block_v / lean variants (two CTAs per SM)

TWO_CTAS_PER_SM = 113 * 1024  # H100 / H200: 228 KB of SMEM per SM, 1 KB of it reserved per CTA


@needs_gpu_interpret
@pytest.mark.parametrize("init", [False, True], ids=["s0=0", "s0"])
@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("block_v", [32, 64])
def test_block_v_lean_forward_interpret(rng, block_v, lean, init):
    """block_v = 32 (64-byte swizzle) / 64 x lean (K * decay in the k slot, state staged in scoped SMEM):
    two whole blocks in the kernel + a 37-token tail, dv = 64 (two value tiles at block_v = 32)."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    q, k, v, s0 = _inputs(rng, 1, 2 * 64 + 37, 128, 64)
    s0 = s0 if init else None
    o, st = gpu_mosaic.lightning_attention_fwd(q, k, v, DECAY, initial_state=s0, interpret=True, block_v=block_v,
                                               lean=lean)
    o_ref, st_ref = jax.jit(reference.quadratic)(*_f32(q, k, v), DECAY, initial_state=s0)
    assert o.dtype == jnp.bfloat16 and o.shape == o_ref.shape and st.shape == st_ref.shape
    assert _rel_err(o, o_ref) < 2e-2 and _rel_err(st, st_ref) < 2e-2  # tolerance as test_forward_interpret


@needs_gpu_interpret
def test_lean_three_slots_forward_interpret(rng):
    """lean, block_v = 32 with 3 slots: 5 blocks wrap the k-slot ring (Kw overwrites each slot before its refill)."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    q, k, v, s0 = _inputs(rng, 1, 5 * 64, 64, 64)
    o, st = gpu_mosaic.lightning_attention_fwd(q, k, v, DECAY, initial_state=s0, interpret=True, block_v=32,
                                               lean=True, num_slots=3)
    o_ref, st_ref = jax.jit(reference.quadratic)(*_f32(q, k, v), DECAY, initial_state=s0)
    assert _rel_err(o, o_ref) < 2e-2 and _rel_err(st, st_ref) < 2e-2


# ------------------------------------------- the step with less SMEM traffic (vdecay / state_t / q_regs / m_regs)

STEP_FLAGS = [
    {"vdecay": True},
    {"state_t": True, "m_regs": True, "num_slots": 3},  # auto_layout's one-wave layout
    {"state_t": True, "m_regs": True, "lean": True},  # auto_layout's layout for more CTAs than SMs
    {"lean": True, "m_regs": True, "q_regs": True},  # Kw in the k slot, the mask staged through scoped SMEM
    {"state_t": True, "m_regs": True, "lean": True, "persistent": True},  # auto_layout's for more CTAs than SMs
]


@needs_gpu_interpret
@pytest.mark.parametrize("kwargs", STEP_FLAGS, ids=lambda kw: "-".join(sorted(kw)))
@pytest.mark.parametrize("dk,init", [(128, True), (64, False)])
def test_smem_lean_step_forward_interpret(rng, kwargs, dk, init):
    """The step variants against the fp32 reference: four whole blocks (the 3-slot ring wraps) + a 37-token tail,
    dv = 128 (two value tiles), with and without an initial state (the transposed state's load / store). q_regs
    takes Q from SMEM in interpret mode, and state_t's (V * decay)^T goes through SMEM there: the GPU's register
    operands are checked by check_gpu_kernels.py and by test_lowers_for_hopper."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    from pallas_kernels.lightning_attention import split

    q, k, v, s0 = _inputs(rng, 1, 4 * 64 + 37, dk, 128)
    s0 = s0 if init else None
    with pytest.MonkeyPatch.context() as mp:  # persistent: 1 "SM" -> 1 or 2 CTAs walk the 4 items (2 v, 2 h)
        mp.setattr(split, "num_sms", lambda: 1)
        o, st = gpu_mosaic.lightning_attention_fwd(q, k, v, DECAY, initial_state=s0, interpret=True, **kwargs)
    o_ref, st_ref = jax.jit(reference.quadratic)(*_f32(q, k, v), DECAY, initial_state=s0)
    assert o.dtype == jnp.bfloat16 and o.shape == o_ref.shape and st.shape == st_ref.shape
    # the same bf16 operands as the plain step (V * decay instead of K * decay): test_forward_interpret's tolerance
    assert _rel_err(o, o_ref) < 2e-2 and _rel_err(st, st_ref) < 2e-2


@pytest.mark.parametrize(
    "b,h,dv,want",
    [
        (1, 64, 128, {"state_t": True, "m_regs": True, "num_slots": 3}),  # 128 CTAs on 132 SMs: one wave
        (1, 66, 128, {"state_t": True, "m_regs": True, "num_slots": 3}),  # 132: still one
        (1, 67, 128, {"state_t": True, "m_regs": True, "lean": True, "persistent": True}),  # 134: two per SM
        (4, 64, 128, {"state_t": True, "m_regs": True, "lean": True, "persistent": True}),
    ],
)
def test_auto_layout(b, h, dv, want):
    from pallas_kernels.lightning_attention import gpu_mosaic

    assert gpu_mosaic.auto_layout(b, h, dv, num_sms=132) == want
    q, v = jnp.zeros((b, 8, h, 128)), jnp.zeros((b, 8, h, dv))  # the persistent grid: two lean CTAs per SM
    assert gpu_mosaic._persistent_ctas(q, v, 64, 2, True, False, True, True, num_sms=132) == min(264, b * h * 2)
    assert gpu_mosaic._persistent_ctas(q, v, 64, 3, False, False, True, True, num_sms=132) == min(132, b * h * 2)
    assert gpu_mosaic.smem_bytes(128, 64, 2, True, state_t=True, m_regs=True) <= TWO_CTAS_PER_SM


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"block_v": 48}, "block_v must be 32 or 64, got 48"),
        ({"lean": "yes"}, "lean must be a bool, got 'yes'"),
        ({"lean": 1}, "lean must be a bool, got 1"),
        ({"state_t": 1}, "state_t must be a bool, got 1"),
    ],
)
def test_block_v_lean_validation(kwargs, match):
    from pallas_kernels.lightning_attention import gpu_mosaic

    x = jnp.zeros((1, 64, H, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match=match):
        gpu_mosaic.lightning_attention_fwd(x, x, x, DECAY, interpret=True, **kwargs)


def test_smem_bytes():
    """lean + block_v = 32 (dk 128, 2 slots) fits two CTAs per SM; the default layout does not."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    sizes = {(bv, lean): gpu_mosaic.smem_bytes(128, bv, 2, lean) for bv in (32, 64) for lean in (False, True)}
    assert sizes[32, True] <= TWO_CTAS_PER_SM < sizes[64, False], sizes
    assert gpu_mosaic.smem_bytes(128) == sizes[64, False] == 175192  # ~171 KB: one CTA per SM
    assert sizes[32, True] < sizes[64, True] < sizes[64, False] and sizes[32, True] < sizes[32, False], sizes
    assert gpu_mosaic.smem_bytes(128, 64, 3, False) <= 227 * 1024 < gpu_mosaic.smem_bytes(128, 64, 4, False)
    # the transposed state needs no K * decay buffer; lean + the mask in registers stages the mask with the state
    assert gpu_mosaic.smem_bytes(128, state_t=True) == 175192 - 16 * 1024
    lean_st = gpu_mosaic.smem_bytes(128, 64, 2, True, state_t=True, m_regs=True)
    assert lean_st == sizes[64, True] - 16 * 1024 <= TWO_CTAS_PER_SM  # 107 KB: two CTAs per SM at block_v = 64
    assert gpu_mosaic.smem_bytes(128, 64, 2, True, vdecay=True, m_regs=True) > TWO_CTAS_PER_SM  # + V * decay


@needs_gpu_interpret
@pytest.mark.parametrize(
    "block_v,lean,num_slots,flags",
    [(64, False, 2, {}), (32, False, 2, {}), (64, True, 2, {}), (32, True, 2, {}), (32, True, 3, {}),
     (64, False, 2, {"vdecay": True, "q_regs": True}), (64, False, 3, {"state_t": True, "m_regs": True}),
     (64, True, 2, {"state_t": True, "m_regs": True}), (64, True, 2, {"m_regs": True, "q_regs": True}),
     (64, True, 2, {"state_t": True, "m_regs": True, "persistent": True, "reverse": True})],
)
def test_lowers_for_hopper(monkeypatch, block_v, lean, num_slots, flags):
    """Exports the forward for CUDA on the CPU: Mosaic GPU's Python passes (layout and transform inference,
    wgmma / TMA lowering; sm_90 assumed) accept the kernel, and its dynamic SMEM is ``smem_bytes``. (The
    PTX compile happens only on a GPU.)"""
    from jax.experimental.mosaic.gpu import core as mgpu_core

    from pallas_kernels.lightning_attention import gpu_mosaic

    sizes = []
    patched = hasattr(mgpu_core, "_smem_tree_size")  # a private helper: the SMEM check only where it exists
    if patched:
        tree_size = mgpu_core._smem_tree_size
        monkeypatch.setattr(mgpu_core, "_smem_tree_size", lambda tree: sizes.append(tree_size(tree)) or sizes[-1])
    b, t, h, d = 1, 256, 2, 128
    x = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16)

    def fwd(q, k, v, decay, s0):
        return gpu_mosaic.lightning_attention_fwd(q, k, v, decay, initial_state=s0, block_v=block_v, lean=lean,
                                                  num_slots=num_slots, **flags)

    jax.export.export(jax.jit(fwd), platforms=["cuda"])(
        x, x, x, jax.ShapeDtypeStruct((h,), jnp.float32), jax.ShapeDtypeStruct((b, h, d, d), jnp.float32)
    )
    if patched:
        assert sizes == [gpu_mosaic.smem_bytes(d, block_v, num_slots, lean, vdecay=flags.get("vdecay", False),
                                               state_t=flags.get("state_t", False), m_regs=flags.get("m_regs", False))]
