"""Pallas Triton (GPU) lightning attention kernels, run in interpret mode on CPU, vs the jnp oracles.

Interpret mode does not check the Triton rules (power-of-two tiles >= 16); the shapes still respect
them after the wrapper's padding. Shapes are tiny because every new shape recompiles. Decays include
a tiny (1e-4), a moderate (0.3) and a large (5.0) rate. Inputs are drawn fresh per test from the
``rng`` fixture (tests/conftest.py: seeded from the test id).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.lightning_attention import gpu_triton, gpu_triton_qkv, ops, reference
from tests.kernels.common import (
    DECAY,
    assert_decay_gradient_is_zero_and_op_matches_reference,
    assert_forward_matches,
    assert_outputs_and_grads_match,
)
from tests.kernels.common import inputs as _inputs, segments as _segments, value_and_grads as _value_and_grads

H = 3


@functools.partial(jax.jit, static_argnames=("block", "fwd_block_v", "bwd_block"))
def _kernel(q, k, v, s0, seg, *, block, fwd_block_v=None, bwd_block=64):
    return gpu_triton.lightning_attention(
        q, k, v, DECAY, initial_state=s0, segment_ids=seg, block_size=block, interpret=True,
        fwd_block_v=fwd_block_v, bwd_block=bwd_block,
    )


@pytest.mark.parametrize(
    "t,dk,dv,block,use_s0,use_seg,fwd_block_v",
    [
        (37, 16, 16, 16, False, False, None),  # 3 blocks, the last one of 5 tokens
        (50, 16, 32, 16, True, True, 16),  # Dv split into two column tiles; last block of 2 tokens
        (37, 24, 16, 256, True, True, None),  # head dim padded 24 -> 32; block clamped to one block
    ],
)
def test_forward_fp32(rng, t, dk, dv, block, use_s0, use_seg, fwd_block_v):
    q, k, v, s0 = _inputs(rng, 2, t, dk, dv, jnp.float32)
    s0 = s0 if use_s0 else None
    seg = _segments(t) if use_seg else None
    o, st = _kernel(q, k, v, s0, seg, block=block, fwd_block_v=fwd_block_v)
    assert_forward_matches(o, st, q, k, v, s0, seg)


def test_forward_bf16(rng):
    t = 50
    q, k, v, s0 = _inputs(rng, 2, t, 16, 16, jnp.bfloat16)
    seg = _segments(t)
    o, st = _kernel(q, k, v, s0, seg, block=16)
    assert_forward_matches(o, st, q, k, v, s0, seg)


@pytest.mark.parametrize(
    "t,dk,dv,use_s0,use_seg,dtype,bwd_block",
    [
        (37, 16, 16, True, False, jnp.float32, 64),  # d(final state) flows back to d(initial_state)
        (50, 32, 32, True, True, jnp.float32, 16),  # Dk / Dv split in two tiles; segments
        (48, 16, 16, False, True, jnp.bfloat16, 64),  # T a multiple of the block, no initial state
    ],
)
def test_gradients(rng, t, dk, dv, use_s0, use_seg, dtype, bwd_block):
    q, k, v, s0 = _inputs(rng, 2, t, dk, dv, dtype)
    s0 = s0 if use_s0 else None
    seg = _segments(t) if use_seg else None
    do = jnp.asarray(rng.standard_normal(v.shape), jnp.float32).astype(dtype)
    dst = jnp.asarray(rng.standard_normal((2, H, dk, dv)), jnp.float32)
    kern = functools.partial(
        gpu_triton.lightning_attention, block_size=16, interpret=True, bwd_block=bwd_block
    )
    outs, grads = jax.jit(functools.partial(_value_and_grads, kern))(q, k, v, s0, seg, do, dst)
    ref_outs, ref_grads = jax.jit(functools.partial(_value_and_grads, reference.chunked))(
        q, k, v, s0, seg, do, dst
    )
    assert_outputs_and_grads_match(outs, grads, ref_outs, ref_grads, dtype)


def test_decay_gradient_is_zero_and_ops_dispatch(rng):
    assert_decay_gradient_is_zero_and_op_matches_reference(rng, block_size=16, impl="triton", interpret=True)
    if jax.default_backend() == "cpu":
        assert ops._auto_impl() == "reference"


def test_head_dim_too_large():
    q = jnp.zeros((1, 8, 1, 300), jnp.float32)
    with pytest.raises(ValueError, match="head dim"):
        gpu_triton.lightning_attention(q, q, q, jnp.ones((1,)), interpret=True)


def _qkv_value_and_grads(fn, qkv, s0, seg, do, dst):
    """(o, state) and the vjp w.r.t. (qkv[, s0]) of ``fn(qkv, initial_state, segment_ids)``."""
    args = (qkv,) if s0 is None else (qkv, s0)
    out, vjp = jax.vjp(lambda x, *s: fn(x, s[0] if s else None, seg), *args)
    return out, vjp((do, dst))


def _sliced_reference(qkv, s0, seg):
    d = qkv.shape[-1] // 3
    return reference.chunked(qkv[..., :d], qkv[..., d: 2 * d], qkv[..., 2 * d:], DECAY, initial_state=s0,
                             segment_ids=seg)


@pytest.mark.parametrize(
    "t,d,use_s0,use_seg,dtype,parts",
    [
        (37, 16, True, True, jnp.float32, 1),  # ragged last block, segments, initial state
        (50, 32, False, True, jnp.bfloat16, 1),  # bf16; Dk / Dv in two tiles of the interleaved columns
        (64, 16, True, True, jnp.float32, 2),  # through the sequence split (chunk states slice k and v)
    ],
)
def test_interleaved_qkv_matches_reference(rng, t, d, use_s0, use_seg, dtype, parts):
    """ops.lightning_attention_qkv with the Triton kernels reading q | k | v in place and writing d qkv interleaved
    (aliased from kernel to kernel): outputs and gradients against the reference on the slices."""
    qkv = jnp.asarray(rng.standard_normal((2, t, H, 3 * d)) / d**0.5, jnp.float32).astype(dtype)
    s0 = jnp.asarray(rng.standard_normal((2, H, d, d)), jnp.float32) if use_s0 else None
    seg = _segments(t) if use_seg else None
    do = jnp.asarray(rng.standard_normal((2, t, H, d)), jnp.float32).astype(dtype)
    dst = jnp.asarray(rng.standard_normal((2, H, d, d)), jnp.float32)

    def kern(x, s0, seg):
        return ops.lightning_attention_qkv(x, DECAY, initial_state=s0, segment_ids=seg, return_state=True,
                                           block_size=16, impl="triton", interpret=True, seq_split=parts)

    outs, grads = jax.jit(functools.partial(_qkv_value_and_grads, kern))(qkv, s0, seg, do, dst)
    ref_outs, ref_grads = jax.jit(functools.partial(_qkv_value_and_grads, _sliced_reference))(qkv, s0, seg, do, dst)
    assert grads[0].shape == qkv.shape
    assert_outputs_and_grads_match(outs, grads, ref_outs, ref_grads, dtype)


def test_interleaved_qkv_kernels_lower_to_triton_with_aliasing():
    """The interleaved forward and the three backward kernels lower for CUDA through jax.export on a CPU machine,
    the gradient buffer aliased from dQ to dK to dV (checked on an H200 by experiments/check_gpu_kernels.py)."""
    qkv = jax.ShapeDtypeStruct((1, 256, 4, 384), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((1, 256), jnp.int32)

    def fwd_bwd(qkv, seg):
        o, vjp = jax.vjp(lambda x: gpu_triton_qkv.lightning_attention_qkv(x, DECAY[:1].repeat(4), segment_ids=seg)[0],
                         qkv)
        return o, vjp(o)

    exported = jax.export.export(
        jax.jit(fwd_bwd), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(qkv, seg)
    text = exported.mlir_module()
    for name in ("lightning_attention_fwd", "lightning_attention_bwd_dq", "lightning_attention_bwd_dk",
                 "lightning_attention_bwd_dv"):
        assert f'name = "{name}"' in text, name
    assert text.count("output_operand_alias<") >= 2  # dK and dV write into the buffer dQ started


def test_interleaved_qkv_rejects_bad_shapes():
    with pytest.raises(ValueError, match="3 \\* head_dim"):
        ops.lightning_attention_qkv(jnp.zeros((1, 8, 2, 50)), jnp.ones((2,)), impl="triton", interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        gpu_triton_qkv.lightning_attention_qkv(jnp.zeros((1, 8, 2, 72)), jnp.ones((2,)), interpret=True)
    # a head dim the interleaved kernels cannot tile runs on slices instead, with the same result
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 20, 3, 72)), jnp.float32)
    o = ops.lightning_attention_qkv(x, DECAY, impl="triton", interpret=True, block_size=16)
    np.testing.assert_allclose(o, _sliced_reference(x, None, None)[0], atol=5e-5, rtol=5e-5)


def test_backward_stages_follow_launch_size(monkeypatch):
    """Two stages (two programs per SM) only where that takes fewer waves at the measured cost per wave; explicit
    stages win over the rule."""
    from pallas_kernels.lightning_attention import split

    monkeypatch.setattr(split, "num_sms", lambda: 132)
    assert [gpu_triton._auto_bwd_stages(p) for p in (64, 128, 256, 384, 512, 1024)] == [3, 3, 2, 3, 2, 2]
    cfg = functools.partial(gpu_triton._config, b=4, t=16384, h=64, dkp=128, dvp=128, has_seg=False)
    assert cfg(gpu_triton.TritonParams()).num_stages == (3, 2)  # 4 * 64 * 2 = 512 programs a kernel
    assert cfg(gpu_triton.TritonParams.make(num_stages=(3, 3))).num_stages == (3, 3)
    assert cfg(gpu_triton.TritonParams.make(num_stages=4)).num_stages == (4, 4)
    assert cfg(gpu_triton.TritonParams.make(num_stages=None)).num_stages == (3, 2)
    assert cfg(gpu_triton.TritonParams(), dkp=64, dvp=64).num_stages == (3, 3)  # the rule is calibrated at D = 128
    assert cfg(gpu_triton.TritonParams.make(bwd_block=32)).num_stages == (3, 3)  # ... and at 64-column tiles


def test_grad_alone_drops_the_forward_kernel():
    """Why the benchmarks time forward + backward with jax.value_and_grad: the custom_vjp saves only the inputs, so
    under jax.grad alone the forward's output is dead and the forward kernel is not in the program at all (lowered for
    CUDA through jax.export on a CPU machine)."""
    x = jax.ShapeDtypeStruct((1, 256, 4, 128), jnp.bfloat16)
    decay = DECAY[:1].repeat(4)

    def loss(q, k, v):
        return jnp.sum(gpu_triton.lightning_attention(q, k, v, decay)[0].astype(jnp.float32))

    def kernels(fn):
        text = jax.export.export(
            jax.jit(fn), platforms=["cuda"],
            disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
        )(x, x, x).mlir_module()
        return {n for n in ("fwd", "bwd_dq", "bwd_dk", "bwd_dv") if f'name = "lightning_attention_{n}"' in text}

    assert kernels(jax.grad(loss, argnums=(0, 1, 2))) == {"bwd_dq", "bwd_dk", "bwd_dv"}
    assert kernels(jax.value_and_grad(loss, argnums=(0, 1, 2))) == {"fwd", "bwd_dq", "bwd_dk", "bwd_dv"}
