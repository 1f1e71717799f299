"""pallas_kernels.segment_attention: the Pallas Triton kernels (interpret mode on the CPU) against the fp32
reference, forward and gradients, ragged lengths, GQA, one-token and returning segments; run bounds against a
numpy loop; the Triton lowering of all three kernels (jax.export for CUDA, no GPU needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.segment_attention import Params, gpu_triton, reference, run_bounds
from tests.kernels.common import rel_err

SMALL = Params(block_q=32, block_k=16, bwd_block_q=16, bwd_block_k=32, interpret=True)


def _segments(rng, b, t):
    """Random runs per row: one-token runs, a long run, padding (0) at the end of row 0, an id that returns."""
    rows = []
    for r in range(b):
        ids, cur = [], 1
        while len(ids) < t:
            n = int(rng.choice([1, 2, int(rng.integers(3, 40))]))
            ids += [cur] * n
            cur = cur + 1 if rng.random() > 0.2 else 1  # sometimes back to id 1: a new run of an old id
        row = np.asarray(ids[:t], np.int32)
        if r == 0:
            row[-int(rng.integers(1, 9)):] = 0
        rows.append(row)
    return jnp.asarray(np.stack(rows))


def test_run_bounds_match_a_loop(rng):
    seg = np.asarray(_segments(rng, 3, 57))
    start, end = (np.asarray(a) for a in run_bounds(jnp.asarray(seg)))
    for r in range(3):
        for i in range(57):
            s = i
            while s > 0 and seg[r, s - 1] == seg[r, i]:
                s -= 1
            e = i + 1
            while e < 57 and seg[r, e] == seg[r, i]:
                e += 1
            assert (start[r, i], end[r, i]) == (s, e)


def _inputs(rng, b, t, h, kv, d, dtype):
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)  # noqa: E731
    return f(b, t, h, d), f(b, t, kv, d), f(b, t, kv, d), f(b, t, h, d)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
def test_kernel_matches_reference_forward_and_gradients(rng, dtype, tol):
    """fp32: the same math up to summation order. bf16: the kernel rounds P and dS to bf16 for their products (as
    every flash kernel does) against an fp32 reference on the same bf16 inputs: ~2^-8 relative per product."""
    b, t, h, kv, d = 2, 77, 4, 2, 32  # t not a multiple of any tile; 2 query heads per kv head
    q, k, v, do = _inputs(rng, b, t, h, kv, d, dtype)
    seg = _segments(rng, b, t)
    f32 = lambda *xs: [x.astype(jnp.float32) for x in xs]  # noqa: E731

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))

    kern = lambda q, k, v: gpu_triton.segment_attention(q, k, v, seg, params=SMALL)  # noqa: E731
    ref = lambda q, k, v: reference.segment_attention(q, k, v, seg)  # noqa: E731
    assert rel_err(kern(q, k, v), ref(*f32(q, k, v))) < tol
    got = jax.grad(lambda *a: loss(kern, *a), (0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: loss(ref, *a), (0, 1, 2))(*f32(q, k, v))
    for name, g, w in zip("qkv", got, want, strict=True):
        assert g.dtype == dtype, name
        assert rel_err(g, w) < 2 * tol, name


def test_no_segment_ids_is_causal_and_runs_equal_the_id_mask(rng):
    """Without ids: plain causal attention. For ids that each form one run (the packer's 1, 2, ..., 0 padding) the
    run mask is the usual same-id-and-causal mask."""
    b, t, h, d = 1, 40, 2, 16
    q, k, v, _ = _inputs(rng, b, t, h, h, d, jnp.float32)
    o = gpu_triton.segment_attention(q, k, v, params=SMALL)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / 4.0
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    want = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v, precision="highest")
    assert rel_err(o, want) < 2e-6
    ids = jnp.asarray(np.repeat(np.array([1, 2, 3, 0]), [9, 1, 20, 10])[None])
    same = (ids[:, :, None] == ids[:, None, :]) & jnp.tril(jnp.ones((t, t), bool))[None]
    assert bool(jnp.all(reference.run_mask(ids) == same))


def test_bad_inputs_name_the_problem():
    q = jnp.zeros((1, 8, 4, 24))
    with pytest.raises(ValueError, match="head_dim a power of two"):
        gpu_triton.segment_attention(q, q[:, :, :2], q[:, :, :2], params=SMALL)
    q = jnp.zeros((1, 8, 3, 16))
    with pytest.raises(ValueError, match="multiple of kv heads"):
        gpu_triton.segment_attention(q, q[:, :, :2], q[:, :, :2], params=SMALL)
    with pytest.raises(ValueError, match="segment_ids must be"):
        gpu_triton.segment_attention(q, q, q, jnp.zeros((1, 7), jnp.int32), params=SMALL)
    with pytest.raises(ValueError, match="block_k must be a power of two"):
        gpu_triton.segment_attention(q, q, q, params=Params(block_k=48, interpret=True))


def test_kernels_lower_to_triton_for_cuda():
    """The three kernels (forward, dQ, dK/dV) at the 1b shape lower to Triton IR through jax.export for CUDA on a
    CPU-only machine: what the GPU compiles, short of ptxas (checked on an H200 by experiments/check_gpu_kernels.py
    --only segment_attention)."""
    q = jax.ShapeDtypeStruct((1, 1024, 16, 128), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((1, 1024, 4, 128), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((1, 1024), jnp.int32)

    def fwd_bwd(q, k, v, seg):
        o, vjp = jax.vjp(lambda q, k, v: gpu_triton.segment_attention(q, k, v, seg), q, k, v)
        return o, vjp(o)

    exported = jax.export.export(
        jax.jit(fwd_bwd), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(q, k, k, seg)
    text = exported.mlir_module()
    for name in ("segment_attention_fwd", "segment_attention_bwd_dq", "segment_attention_bwd_dkv"):
        assert f'name = "{name}"' in text, name
