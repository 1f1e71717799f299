"""Pallas TPU (Mosaic) decode attention, run in TPU interpret mode on the CPU, vs the fp32 oracle; plus its Mosaic
lowering for TPU (jax.export, no TPU needed).

Shapes are tiny (interpret mode simulates every grid step) but keep the kernel's tiling rules: block_k * K a
multiple of 8, query heads padded to 8 rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.decode_attention import ops, reference, tpu
from tests.kernels.common import rel_err


def _inputs(rng, b, H, K, D, S, dtype):
    q = jnp.asarray(rng.standard_normal((b, H, D)), jnp.float32).astype(dtype)
    k = jnp.asarray(rng.standard_normal((b, S, K, D)), jnp.float32).astype(dtype)
    v = jnp.asarray(rng.standard_normal((b, S, K, D)), jnp.float32).astype(dtype)
    return q, k, v


def _oracle(q, k, v, start, length):
    return reference.decode_attention(*(a.astype(jnp.float32) for a in (q, k, v)), start, length)


# Rows: one slot only; a short range; a range that starts mid-block (left padding) and ends mid-block; the whole
# cache; an empty range (a row not yet filled: zeros).
def _bounds(S, blk, rng):
    a = blk * int(rng.integers(0, S // (4 * blk))) + int(rng.integers(1, blk))  # never on a block edge
    start = np.array([0, 3, a, 0, 7], np.int32)
    length = np.array([1, 9, S - int(rng.integers(1, blk)), S, 7], np.int32)
    return jnp.asarray(start), jnp.asarray(length)


@pytest.mark.parametrize("H,K,D,dtype,tol", [
    (4, 4, 16, jnp.float32, 1e-5),   # MHA (G = 1; 4 heads padded to 8 rows), fp32 (HIGHEST dots): round-off only
    (6, 2, 32, jnp.float32, 1e-5),   # G = 3 (not a power of two; 6 heads padded to 8)
    (8, 2, 16, jnp.bfloat16, 2e-2),  # G = 4, bf16: the oracle gets the same bf16 inputs, so the error is p rounded
    # to bf16 for the value dot and the bf16 output, each ~2^-9 relative per term: a few 1e-3 of max |o| in practice
])
def test_kernel_matches_oracle_on_ragged_rows(H, K, D, dtype, tol):
    rng = np.random.default_rng()
    S, blk = 272, 16  # 17 blocks: a cache of an odd number of blocks
    q, k, v = _inputs(rng, 5, H, K, D, S, dtype)
    start, length = _bounds(S, blk, rng)
    out = tpu.decode_attention(q, k, v, start, length, block_k=blk, interpret=True)
    assert out.dtype == dtype and out.shape == (5, H, D)
    assert rel_err(out, _oracle(q, k, v, start, length)) < tol
    assert np.all(np.asarray(out[4], np.float32) == 0)  # empty range -> zeros, not NaN


def test_blocks_outside_the_range_are_never_read():
    """NaN in every slot of the blocks that do not meet a row's range (all blocks of an empty row): the kernel must
    neither fetch nor use them. The out-of-range slots of the blocks it does read hold large finite garbage, which
    the mask must drop (NaN there would survive 0 * NaN in the value dot, so they stay finite)."""
    rng = np.random.default_rng()
    S, K, D, blk = 144, 2, 16, 16  # 9 blocks
    q, k, v = _inputs(rng, 6, 4, K, D, S, jnp.float32)
    start = np.array([16, 40, 5, 7, 0, 120], np.int32)  # aligned range; one slot; ragged; empty; whole; past S
    length = np.array([48, 41, 100, 7, S, 999], np.int32)
    pos = np.arange(S)[None, :, None, None]
    lo, hi = start[:, None, None, None], np.minimum(length, S)[:, None, None, None]
    outside = (pos < lo) | (pos >= hi)
    far = (pos < lo // blk * blk) | (pos >= -(-hi // blk) * blk) | (hi <= lo)
    kp, vp = (jnp.where(far, jnp.nan, jnp.where(outside, 1e4, a)) for a in (k, v))
    ref = reference.decode_attention(q, jnp.where(outside, 0, k), jnp.where(outside, 0, v), start, length)
    out = tpu.decode_attention(q, kp, vp, jnp.asarray(start), jnp.asarray(length), block_k=blk, interpret=True)
    assert np.all(np.isfinite(np.asarray(out)))
    assert rel_err(out, ref) < 1e-5
    assert np.all(np.asarray(out[3]) == 0)


def test_dispatch_default_block_and_bad_shapes():
    rng = np.random.default_rng()
    q, k, v = _inputs(rng, 2, 4, 2, 16, 192, jnp.float32)  # default block_k: 64 (192 = 3 blocks)
    start, length = jnp.array([0, 70]), jnp.array([192, 130])
    out = ops.decode_attention(q, k, v, start, length, impl="tpu", interpret=True)
    assert rel_err(out, reference.decode_attention(q, k, v, start, length)) < 1e-5
    assert tpu.default_block_k(192, 2) == 64 and tpu.default_block_k(4096, 4) == 512
    assert tpu.default_block_k(65536, 8) == 256 and tpu.default_block_k(4160, 8) == 64
    assert not tpu.fits(q.shape, k.shape, 2) and not tpu.fits((1, 6, 16), (1, 64, 4, 16))
    q6, k4, v4 = _inputs(rng, 2, 6, 4, 16, 64, jnp.float32)
    with pytest.raises(ValueError, match="6 query heads are not a multiple of 4 kv heads"):
        tpu.decode_attention(q6, k4, v4, start, length, interpret=True)
    with pytest.raises(ValueError, match="cache length 56 is not a multiple of block_k = 16"):
        tpu.decode_attention(q, k[:, :56], v[:, :56], start, length, block_k=16, interpret=True)
    with pytest.raises(ValueError, match="block_k \\* kv_heads = 2 \\* 2 is not a multiple of 8"):
        tpu.decode_attention(q, k, v, start, length, block_k=2, interpret=True)
    with pytest.raises(ValueError, match="want q \\[b, H, D\\], k = v"):
        tpu.decode_attention(q, k, v[:, :64], start, length, interpret=True)
    with pytest.raises(ValueError, match="does not match q"):
        tpu.decode_attention(q, k[..., :8], v[..., :8], start, length, interpret=True)
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.decode_attention(q, k, v, start, length, impl="mosaic")


@pytest.mark.parametrize("b,H,K,D,S", [(4, 16, 4, 128, 4096), (2, 6, 2, 128, 1024), (8, 64, 8, 128, 65536)])
def test_lowers_for_tpu(b, H, K, D, S):
    """The Mosaic lowering runs on a CPU-only machine (libtpu's compiler does not: not checked here)."""
    bf16, i32 = jnp.bfloat16, jnp.int32
    args = (jax.ShapeDtypeStruct((b, H, D), bf16), jax.ShapeDtypeStruct((b, S, K, D), bf16),
            jax.ShapeDtypeStruct((b, S, K, D), bf16), jax.ShapeDtypeStruct((b,), i32), jax.ShapeDtypeStruct((b,), i32))
    exported = jax.export.export(jax.jit(tpu.decode_attention), platforms=["tpu"])(*args)
    assert exported.platforms == ("tpu",)
    assert "tpu_custom_call" in exported.mlir_module()
    assert exported.out_avals[0].shape == (b, H, D) and exported.out_avals[0].dtype == bf16


def test_index_map_fetches_only_valid_blocks():
    """The k / v block of every grid step (what the pipeline DMAs): per row exactly the blocks meeting [start,
    length), each fetched in one run of consecutive steps (a repeated index issues no new DMA); one block for an
    empty row."""
    S, blk = 160, 16
    n = S // blk
    start = np.array([0, 17, 31, 40, 0, 99, 160], np.int32)
    length = np.array([1, 18, 129, 40, S, 3, 170], np.int32)
    sr, lr = jnp.clip(jnp.asarray(start), 0, S), jnp.clip(jnp.asarray(length), 0, S)  # as the wrapper prefetches
    for r in range(len(start)):
        blocks = [int(tpu.kv_index_map(r, j, sr, lr, block_k=blk, n_blocks=n)[1]) for j in range(n)]
        fetched = [x for i, x in enumerate(blocks) if i == 0 or x != blocks[i - 1]]  # a DMA per change of index
        lo, hi = int(sr[r]), int(lr[r])
        want = list(range(lo // blk, -(-hi // blk))) if hi > lo else [min(lo // blk, n - 1)]
        assert fetched == want, (r, blocks)
