"""ops impl "mosaic_gpu_all": the Mosaic GPU forward's reverse scan and the backward as three forward passes
(gpu_mosaic_bwd.py), on a CPU.

The kernel tests run in JAX's GPU interpret mode (JAX >= 0.11; skipped on CI's 0.10.2, as tests/kernels/
test_gpu_mosaic.py's) against the fp32 jnp reference on the same bf16-rounded inputs; the lowering test exports the
whole forward + backward for CUDA. The support checks run everywhere.
"""

from __future__ import annotations

import functools
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


@needs_gpu_interpret
@pytest.mark.parametrize("parts,sms,init,t",
                         [(1, 1, True, 4 * 64), (2, 132, False, 4 * 64), (1, 132, True, 2 * 64 + 17)],
                         ids=["lean-persistent", "split-3-slot", "ragged"])
def test_qkv_three_pass_backward_interpret(rng, monkeypatch, parts, sms, init, t):
    """ops.lightning_attention_qkv(impl="mosaic_gpu_all"): the forward reads q | k | v in place, the three passes
    write d qkv in place; against jax.vjp of the fp32 reference on the slices: with 1 "SM" (the lean persistent
    layout) and an initial state; on a 2-way sequence split (split_sequence_qkv seeds each chunk's passes with its
    end-state cotangent) with the 3-slot layout and none; a ragged length (the forward's whole blocks read qkv's first
    rows in place, the tail in the reference; the backward falls back to the interleaved Triton kernels)."""
    from pallas_kernels.lightning_attention import split

    monkeypatch.setattr(split, "num_sms", lambda: sms)
    b, d = 1, 64
    qkv = jnp.asarray(rng.standard_normal((b, t, H, 3 * d)) / d**0.25, jnp.float32).astype(jnp.bfloat16)
    s0 = jnp.asarray(rng.standard_normal((b, H, d, d)), jnp.float32) if init else None
    do = jnp.asarray(rng.standard_normal((b, t, H, d)), jnp.float32).astype(jnp.bfloat16)
    dst = jnp.asarray(rng.standard_normal((b, H, d, d)), jnp.float32)

    def run(x, s, impl, **kw):
        def f(x, *s):
            return ops.lightning_attention_qkv(x, DECAY, initial_state=s[0] if s else None, return_state=True,
                                               impl=impl, **kw)

        out, pullback = jax.vjp(f, x, *(() if s is None else (s,)))
        return out, pullback((do.astype(out[0].dtype), dst))

    (o, st), (dqkv, *ds0) = jax.jit(lambda x, s: run(x, s, "mosaic_gpu_all", interpret=True, seq_split=parts))(
        qkv, s0)
    (o_r, st_r), (dqkv_r, *ds0_r) = jax.jit(lambda x, s: run(x, s, "reference"))(qkv.astype(jnp.float32), s0)
    assert dqkv.dtype == jnp.bfloat16 and dqkv.shape == qkv.shape and len(ds0) == len(ds0_r) == int(init)
    assert rel_err(o, o_r) < 2e-2 and rel_err(st, st_r) < 2e-2
    assert all(rel_err(a, b) < 2e-2 for a, b in zip(ds0, ds0_r, strict=True))
    for i, name in enumerate(("dq", "dk", "dv")):  # each third is its own gradient (a misplaced one is O(1) off)
        assert rel_err(dqkv[..., i * d: (i + 1) * d], dqkv_r[..., i * d: (i + 1) * d]) < 2e-2, name


@needs_gpu_interpret
def test_qkv_forward_and_backward_lower_for_hopper():
    """value_and_grad of lightning_attention_qkv(impl="mosaic_gpu_all") exports for CUDA as four Mosaic kernels and
    nothing that copies qkv's thirds: no slice of it, no concatenation or pad building d qkv (the in-place
    reads and the Ref the passes write into)."""
    b, t, h, d = 2, 256, 2, 128

    def loss(qkv, decay):
        return jnp.sum(ops.lightning_attention_qkv(qkv, decay, impl="mosaic_gpu_all", seq_split=1).astype(jnp.float32))

    exported = jax.export.export(jax.jit(jax.value_and_grad(loss)), platforms=["cuda"])(
        jax.ShapeDtypeStruct((b, t, h, 3 * d), jnp.bfloat16), jax.ShapeDtypeStruct((h,), jnp.float32))
    text = exported.mlir_module()
    assert len(re.findall(r"custom_call @mosaic_gpu_v2", text)) == 4
    assert not re.findall(r"custom_call @triton", text)
    # a ragged length: the forward's whole blocks lower too (their rows are sliced off: the TMA lowering needs the
    # sequence dimension a multiple of 8, so reading the first rows of the whole array in place does not lower)
    ragged = jax.export.export(jax.jit(lambda x, d: ops.lightning_attention_qkv(x, d, impl="mosaic_gpu_all",
                                                                                 seq_split=1)), platforms=["cuda"])(
        jax.ShapeDtypeStruct((b, 145, h, 3 * d), jnp.bfloat16), jax.ShapeDtypeStruct((h,), jnp.float32))
    assert len(re.findall(r"custom_call @mosaic_gpu_v2", ragged.mlir_module())) == 1
    assert not re.findall(r"stablehlo\.(slice|dynamic_slice|concatenate|pad)\b[^\n]*tensor<2x256x2x384xbf16>", text)


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


def test_forward_columns_rejects_bad_columns_and_buffers():
    """Runs everywhere (the checks precede any kernel): columns outside the arrays, zero widths, and an output buffer
    of the wrong shape, dtype or column range, or with a ragged length, are ValueErrors naming the problem."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    qkv = jnp.zeros((1, 128, H, 3 * 64), jnp.bfloat16)
    fwd = functools.partial(gpu_mosaic.forward_columns, qkv, qkv, qkv, DECAY, interpret=True)
    with pytest.raises(ValueError, match=r"v's columns \[160, 224\) are not within"):
        fwd(cols=(0, 64, 160, 64, 64))
    with pytest.raises(ValueError, match=r"q's columns \[0, 0\) are not within"):  # a zero width
        fwd(cols=(0, 64, 128, 0, 64))
    for buf, col, msg in ((jnp.zeros((1, 128, H, 192), jnp.float32), 0, "o_buf must be"),
                          (jnp.zeros((1, 64, H, 192), jnp.bfloat16), 0, "o_buf must be"),
                          (jnp.zeros((1, 128, H, 192), jnp.bfloat16), 160, "o_buf must be")):
        with pytest.raises(ValueError, match=msg):
            fwd(cols=(0, 64, 128, 64, 64), o_buf=jax.new_ref(buf), o_col=col)
    ragged = jnp.zeros((1, 100, H, 3 * 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="o_buf needs a sequence length that is a multiple of 64, got 100"):
        gpu_mosaic.forward_columns(ragged, ragged, ragged, DECAY, cols=(0, 64, 128, 64, 64),
                                   o_buf=jax.new_ref(ragged), interpret=True)


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


def _record_passes(monkeypatch, b):
    """Replace gpu_mosaic.forward_columns by a recorder: each call's (q, k, v) views (its columns), initial state,
    reverse flag, layout and output column; o is the pass's index + 1 (written into o_buf when given), the final
    state 2."""
    from pallas_kernels.lightning_attention import gpu_mosaic, gpu_mosaic_call

    calls = []

    def fake(q_, k_, v_, decay, *, cols, o_buf=None, o_col=0, initial_state=None, reverse=False, interpret=False,
             **layout):
        qc, kc, vc, dk, dv = cols
        views = tuple(gpu_mosaic_call._columns(x, c, w) for x, c, w in ((q_, qc, dk), (k_, kc, dk), (v_, vc, dv)))
        calls.append((views, initial_state, reverse, layout, o_col))
        o = jnp.full(q_.shape[:3] + (dv,), len(calls), q_.dtype)
        final = jnp.full((b, H, dk, dv), 2.0, jnp.float32)
        if o_buf is None:
            return o, final
        o_buf[:, :, :, o_col: o_col + dv] = o
        return None, final

    monkeypatch.setattr(gpu_mosaic, "forward_columns", fake)
    return calls


def _check_passes(calls, q, k, v, do, s0, dst, b, dk, dv):
    """The renamed operands, reverse flags, e^{s}-scaled (and for dk transposed) state cotangent, auto_layout."""
    from pallas_kernels.lightning_attention import gpu_mosaic

    (v1, i1, r1, l1, _), (v2, i2, r2, l2, _), (v3, i3, r3, l3, _) = calls
    grow = np.exp(np.asarray(DECAY))[None, :, None, None]

    def same(xs, ys):
        return all(x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in zip(xs, ys, strict=True))

    assert same(v1, (do, v, k)) and not r1 and np.allclose(i1, np.swapaxes(s0, -1, -2))
    assert same(v2, (k, q, do)) and r2 and np.allclose(i2, dst * grow)
    assert same(v3, (v, do, q)) and r3 and np.allclose(i3, np.swapaxes(dst * grow, -1, -2))
    assert l1 == l3 == gpu_mosaic.auto_layout(b, H, dk) and l2 == gpu_mosaic.auto_layout(b, H, dv)
    return grow


def test_backward_wiring_runs_three_forward_passes(monkeypatch):
    """Runs everywhere (the forward kernel replaced by a recorder): the three passes get the renamed operands, the
    reverse flags, the e^{s}-scaled final-state cotangent (transposed for dk) and auto_layout's layout; d initial
    state is e^{-s} x the dv pass's final state."""
    from pallas_kernels.lightning_attention import gpu_mosaic_bwd

    b, t, dk, dv = 1, 128, 64, 128
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.standard_normal((b, t, H, dk)), jnp.bfloat16) for _ in range(2))
    v, do = (jnp.asarray(rng.standard_normal((b, t, H, dv)), jnp.bfloat16) for _ in range(2))
    s0 = jnp.asarray(rng.standard_normal((b, H, dk, dv)), jnp.float32)
    dst = jnp.asarray(rng.standard_normal((b, H, dk, dv)), jnp.float32)
    calls = _record_passes(monkeypatch, b)
    dq, dk_, dv_, ds0 = gpu_mosaic_bwd.backward(q, k, v, DECAY, s0, do, dst)
    assert dq.shape == q.shape and dk_.shape == k.shape and dv_.shape == v.shape and ds0.shape == s0.shape
    assert [float(x[0, 0, 0, 0]) for x in (dq, dv_, dk_)] == [1.0, 2.0, 3.0]  # dq, dv, dk passes in that order
    grow = _check_passes(calls, q, k, v, do, s0, dst, b, dk, dv)
    np.testing.assert_allclose(ds0, 2.0 / np.broadcast_to(grow, ds0.shape), rtol=1e-6)


def test_qkv_backward_wiring_writes_dqkv_in_place(monkeypatch):
    """Runs everywhere: on the interleaved qkv the passes read q | k | v at their columns and write dq, dk, dv into
    one buffer at the same columns (each pass's output lands in its own third, nothing else is written)."""
    from pallas_kernels.lightning_attention import gpu_mosaic_bwd

    b, t, d = 2, 128, 64
    rng = np.random.default_rng(1)
    qkv = jnp.asarray(rng.standard_normal((b, t, H, 3 * d)), jnp.bfloat16)
    do = jnp.asarray(rng.standard_normal((b, t, H, d)), jnp.bfloat16)
    s0, dst = (jnp.asarray(rng.standard_normal((b, H, d, d)), jnp.float32) for _ in range(2))
    calls = _record_passes(monkeypatch, b)
    dqkv, ds0 = gpu_mosaic_bwd.backward_qkv(qkv, DECAY, s0, do, dst)
    assert dqkv.shape == qkv.shape and dqkv.dtype == qkv.dtype and ds0.shape == s0.shape
    # dq pass first (columns 0:d), then dv (2d:3d), then dk (d:2d)
    np.testing.assert_array_equal(dqkv.astype(jnp.float32).reshape(-1, 3, d).mean(axis=(0, 2)), [1.0, 3.0, 2.0])
    assert [c[-1] for c in calls] == [0, 2 * d, d]
    _check_passes(calls, qkv[..., :d], qkv[..., d: 2 * d], qkv[..., 2 * d:], do, s0, dst, b, d, d)


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
