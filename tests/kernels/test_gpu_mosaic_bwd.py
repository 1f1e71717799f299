"""ops impl "mosaic_gpu_all": the Mosaic GPU forward's reverse scan and the backward as three forward passes
(gpu_mosaic_bwd.py), on a CPU.

The kernel tests run in JAX's GPU interpret mode (JAX >= 0.11; skipped on CI's 0.10.2, as tests/kernels/
test_gpu_mosaic.py's) against the fp32 jnp reference on the same bf16-rounded inputs; the lowering test exports the
whole forward + backward for CUDA. The support checks run everywhere.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.lightning_attention import ops, reference
from tests.kernels.common import rel_err
from tests.kernels.test_gpu_mosaic import DECAY, H, _f32, _inputs, needs_gpu_interpret


@needs_gpu_interpret
@pytest.mark.parametrize("kwargs", [{}, {"state_t": True, "m_regs": True, "lean": True, "persistent": True}],
                         ids=["plain", "auto-lean"])
def test_reverse_forward_interpret(rng, kwargs):
    """reverse=True is the forward of the time-reversed sequence, flipped back: o_t sums over u >= t, the initial
    state enters after the last token, the state returned is the one at the first token."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    from pallas_kernels.lightning_attention import split

    q, k, v, s0 = _inputs(rng, 1, 4 * 64, 128, 128)  # 4 blocks: the 2-slot ring wraps
    with pytest.MonkeyPatch.context() as mp:  # persistent: 1 "SM" -> each CTA walks 2 of the 4 items
        mp.setattr(split, "num_sms", lambda: 1)
        o, st = gpu_mosaic.lightning_attention_fwd(q, k, v, DECAY, initial_state=s0, interpret=True, reverse=True,
                                                   **kwargs)
    flip = lambda x: jnp.flip(x.astype(jnp.float32), 1)  # noqa: E731
    o_ref, st_ref = jax.jit(reference.quadratic)(flip(q), flip(k), flip(v), DECAY, initial_state=s0)
    # bf16 operands as the forward (test_gpu_mosaic.test_forward_interpret's tolerance); a wrong mirror gives O(1)
    assert rel_err(o, jnp.flip(o_ref, 1)) < 2e-2 and rel_err(st, st_ref) < 2e-2


def _vjp(fn, q, k, v, s0, do, dst):
    args = (q, k, v) if s0 is None else (q, k, v, s0)

    def f(q, k, v, *s0_):
        return fn(q, k, v, DECAY, initial_state=s0_[0] if s0_ else None, return_state=True)

    out, pullback = jax.vjp(f, *args)
    return out, pullback((do.astype(out[0].dtype), dst))


@needs_gpu_interpret
@pytest.mark.parametrize("b,t,dk,dv,init,sms", [(1, 4 * 64, 128, 128, True, 132), (2, 2 * 64, 64, 128, False, 1)],
                         ids=["3-slot", "lean-persistent"])
def test_three_pass_backward_interpret(rng, monkeypatch, b, t, dk, dv, init, sms):
    """dq, dk, dv (and d initial_state) of impl "mosaic_gpu_all" against jax.vjp of the fp32 reference, with a
    random cotangent on o and on the final state; dk != dv swaps the kernel's q / k and v widths between passes.
    auto_layout's two layouts: 3 slots with 4 blocks (the ring wraps), and with 1 "SM" the lean layout on the
    persistent grid (each CTA walks several items), forward and reverse."""
    from pallas_kernels.lightning_attention import gpu_mosaic_bwd, split

    monkeypatch.setattr(split, "num_sms", lambda: sms)
    q, k, v, s0 = _inputs(rng, b, t, dk, dv)
    s0 = s0 if init else None
    do = jnp.asarray(rng.standard_normal((b, t, H, dv)), jnp.float32).astype(jnp.bfloat16)
    dst = jnp.asarray(rng.standard_normal((b, H, dk, dv)), jnp.float32)
    assert gpu_mosaic_bwd.unsupported_reason(q, k, v, DECAY, s0) is None  # the three passes, no fallback

    def ours(*a, **kw):
        return ops.lightning_attention(*a, impl="mosaic_gpu_all", interpret=True, seq_split=1, **kw)

    def ref(*a, **kw):
        return ops.lightning_attention(*a, impl="reference", **kw)

    (o, st), grads = jax.jit(lambda *a: _vjp(ours, *a))(q, k, v, s0, do, dst)
    (o_r, st_r), grads_r = jax.jit(lambda *a: _vjp(ref, *a))(*_f32(q, k, v, s0, do), dst)
    assert rel_err(o, o_r) < 2e-2 and rel_err(st, st_r) < 2e-2
    assert len(grads) == len(grads_r) == (4 if init else 3)
    for name, g, g_r in zip(("dq", "dk", "dv", "ds0")[: len(grads)], grads, grads_r, strict=True):
        assert g.dtype == (jnp.float32 if name == "ds0" else jnp.bfloat16), name
        # each pass rounds P, the decayed operand and the state to bf16 as the forward does (2.4e-3 measured)
        assert rel_err(g, g_r) < 2e-2, name


@needs_gpu_interpret
def test_ragged_length_falls_back_to_triton_backward(rng):
    """T % 64 != 0: the reverse scans have no tail, so the backward runs the Triton kernels (same gradients)."""
    from pallas_kernels.lightning_attention import gpu_mosaic_bwd

    q, k, v, s0 = _inputs(rng, 1, 2 * 64 + 37, 64, 64)
    assert "multiple of 64" in gpu_mosaic_bwd.unsupported_reason(q, k, v, DECAY, s0)
    do = jnp.asarray(rng.standard_normal(v.shape), jnp.float32).astype(jnp.bfloat16)
    dst = jnp.zeros((1, H, 64, 64), jnp.float32)

    def ours(*a, **kw):
        return ops.lightning_attention(*a, impl="mosaic_gpu_all", interpret=True, seq_split=1, **kw)

    _, grads = jax.jit(lambda *a: _vjp(ours, *a))(q, k, v, s0, do, dst)
    _, grads_r = jax.jit(lambda *a: _vjp(ops.lightning_attention, *a))(*_f32(q, k, v, s0, do), dst)
    for g, g_r in zip(grads, grads_r, strict=True):
        assert rel_err(g, g_r) < 2e-2


def test_unsupported_reason():
    from pallas_kernels.lightning_attention import gpu_mosaic_bwd

    x = jnp.zeros((1, 128, H, 128), jnp.bfloat16)
    assert gpu_mosaic_bwd.unsupported_reason(x, x, x, DECAY) is None
    assert "segment_ids" in gpu_mosaic_bwd.unsupported_reason(x, x, x, DECAY, segment_ids=jnp.zeros((1, 128)))
    assert "multiple of 64" in gpu_mosaic_bwd.unsupported_reason(x[:, :100], x[:, :100], x[:, :100], DECAY)
    assert "bf16/f16" in gpu_mosaic_bwd.unsupported_reason(*(y.astype(jnp.float32) for y in (x, x, x)), DECAY)
    assert "mosaic_gpu_all" in ops.IMPLS


def test_reverse_needs_whole_blocks():
    from pallas_kernels.lightning_attention import gpu_mosaic

    x = jnp.zeros((1, 100, H, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="reverse=True needs a sequence length that is a multiple of 64, got 100"):
        gpu_mosaic.lightning_attention_fwd(x, x, x, DECAY, interpret=True, reverse=True)


@needs_gpu_interpret
def test_forward_and_backward_lower_for_hopper():
    """value_and_grad of impl "mosaic_gpu_all" exports for CUDA with Mosaic GPU kernels only (no Triton call: the
    backward's three passes and the reverse scans, with their register operands, pass Mosaic's lowering)."""
    b, t, h, d = 2, 256, 2, 128
    x = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16)

    def loss(q, k, v, decay, s0):
        o, st = ops.lightning_attention(q, k, v, decay, initial_state=s0, return_state=True, impl="mosaic_gpu_all",
                                        seq_split=1)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(st)

    exported = jax.export.export(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 4))), platforms=["cuda"])(
        x, x, x, jax.ShapeDtypeStruct((h,), jnp.float32), jax.ShapeDtypeStruct((b, h, d, d), jnp.float32))
    text = exported.mlir_module()
    assert not re.findall(r"custom_call @triton", text)  # (source locations may still name gpu_triton.py)
    assert len(re.findall(r"custom_call @mosaic_gpu_v2", text)) == 4, "one forward and three backward kernels"
    assert len(exported.out_avals) == 5  # the loss, dq, dk, dv, d initial_state


def test_backward_wiring_runs_three_forward_passes(monkeypatch):
    """Runs everywhere (the forward kernel replaced by a recorder): the three passes get the renamed operands, the
    reverse flags, the e^{s}-scaled final-state cotangent (transposed for dk) and auto_layout's layout; d initial
    state is e^{-s} x the dv pass's final state."""
    from pallas_kernels.lightning_attention import gpu_mosaic, gpu_mosaic_bwd

    b, t, dk, dv = 1, 128, 64, 128
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.standard_normal((b, t, H, dk)), jnp.bfloat16) for _ in range(2))
    v, do = (jnp.asarray(rng.standard_normal((b, t, H, dv)), jnp.bfloat16) for _ in range(2))
    s0 = jnp.asarray(rng.standard_normal((b, H, dk, dv)), jnp.float32)
    dst = jnp.asarray(rng.standard_normal((b, H, dk, dv)), jnp.float32)
    calls = []

    def fake_fwd(q_, k_, v_, decay, *, initial_state=None, reverse=False, interpret=False, **layout):
        calls.append((q_, k_, v_, initial_state, reverse, layout))
        final = jnp.full((b, H, q_.shape[-1], v_.shape[-1]), 2.0, jnp.float32)
        return jnp.zeros(q_.shape[:3] + v_.shape[-1:], q_.dtype), final

    monkeypatch.setattr(gpu_mosaic, "lightning_attention_fwd", fake_fwd)
    dq, dk_, dv_, ds0 = gpu_mosaic_bwd.backward(q, k, v, DECAY, s0, do, dst)
    assert dq.shape == q.shape and dk_.shape == k.shape and dv_.shape == v.shape and ds0.shape == s0.shape
    (q1, k1, v1, i1, r1, l1), (q2, k2, v2, i2, r2, l2), (q3, k3, v3, i3, r3, l3) = calls
    grow = np.exp(np.asarray(DECAY))[None, :, None, None]

    def same(xs, ys):
        return all(x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in zip(xs, ys, strict=True))

    assert same((q1, k1, v1), (do, v, k)) and not r1 and np.allclose(i1, np.swapaxes(s0, -1, -2))
    assert same((q2, k2, v2), (k, q, do)) and r2 and np.allclose(i2, dst * grow)
    assert same((q3, k3, v3), (v, do, q)) and r3 and np.allclose(i3, np.swapaxes(dst * grow, -1, -2))
    assert l1 == l3 == gpu_mosaic.auto_layout(b, H, dk) and l2 == gpu_mosaic.auto_layout(b, H, dv)
    np.testing.assert_allclose(ds0, 2.0 / np.broadcast_to(grow, ds0.shape), rtol=1e-6)


def test_ops_adapter_runs_auto_layout(monkeypatch):
    """Runs everywhere: the ops adapter's forward passes auto_layout's flags to the kernel."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    seen = {}

    def fake_fwd(q, k, v, decay, *, initial_state=None, interpret=False, **layout):
        seen.update(layout)
        return v, None

    monkeypatch.setattr(gpu_mosaic, "lightning_attention_fwd", fake_fwd)
    x = jnp.zeros((4, 64, 64, 128), jnp.bfloat16)  # 512 CTAs: more than the SMs
    gpu_mosaic._forward(x, x, x, jnp.ones((64,)), None, None, interpret=False)
    assert seen == gpu_mosaic.auto_layout(4, 64, 128) == {"state_t": True, "m_regs": True, "lean": True,
                                                           "persistent": True}
