"""GPU checks of the kernels beside lightning attention, run through experiments/check_gpu_kernels.py (--only
decode_attention,segment_attention,grouped_matmul): the softmax decode kernel, the packed-document attention kernel
and the Mosaic expert matmul, each against its fp32 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.gpu_check_record import F32, guarded, record


def check_grouped_matmul(args):
    print("\n== pallas_kernels.grouped_matmul(impl='mosaic_gpu'): fwd, dx, dw vs fp32 lax.ragged_dot ==")
    if args.interpret:
        print("  skipped: JAX's Hopper ragged-dot kernels have no interpret mode (tests use stand-ins)")
        return
    from pallas_kernels.grouped_matmul import grouped_matmul

    def one(m, k, n, sizes):
        key = jax.random.key(m + k + n)
        kx, kw, kd = jax.random.split(key, 3)
        gs = jnp.asarray(sizes, jnp.int32)
        x = (jax.random.normal(kx, (m, k), F32) / np.sqrt(k)).astype(jnp.bfloat16)
        w = jax.random.normal(kw, (len(sizes), k, n), F32).astype(jnp.bfloat16)
        dy = jax.random.normal(kd, (m, n), F32).astype(jnp.bfloat16)
        f32 = lambda a: a.astype(F32)  # noqa: E731
        y, vjp = jax.vjp(lambda x, w: grouped_matmul(x, w, gs, impl="mosaic_gpu"), x, w)
        y_ref, vjp_ref = jax.vjp(lambda x, w: grouped_matmul(x, w, gs, impl="xla"), f32(x), f32(w))
        shape = f"m{m} k{k} n{n} G{len(sizes)}"
        record("grouped_matmul", shape, "y", y, y_ref, 1e-2)
        for name, a, b in zip(("dx", "dw"), jax.jit(vjp)(dy), vjp_ref(f32(dy)), strict=True):
            record("grouped_matmul", shape, name, a, b, 1e-2)
        past = int(sum(sizes))
        if past < m:  # rows past the groups must come out as exact zeros
            record("grouped_matmul", shape, "rows>", np.asarray(f32(y))[past:] + 1.0, np.ones((m - past, n)), 0.0)

    # MoE shapes of the 1b preset (d 2048, F 2816, 8 experts): uneven, one empty group, 37 rows past the groups;
    # a decode-sized problem (5 rows); the 100m preset (768 / 1024).
    rng = np.random.default_rng(0)
    sizes = rng.multinomial(16384, rng.dirichlet(np.ones(8)))
    sizes[3] = 0
    sizes = np.append(sizes[:-1], sizes[-1] + sizes[3])
    guarded("grouped_matmul", lambda: one(16384 + 37, 2048, 2816, sizes))
    guarded("grouped_matmul", lambda: one(16384, 2048, 2 * 2816, sizes))  # MoE.fuse_up: w1 | w3 interleaved
    guarded("grouped_matmul", lambda: one(5, 2048, 2816, [2, 0, 0, 3, 0, 0, 0, 0]))
    guarded("grouped_matmul", lambda: one(4096, 768, 1024, rng.multinomial(4096, np.ones(8) / 8)))


def check_decode_attention(args):
    print("\n== pallas_kernels.decode_attention (softmax decode over a KV cache, split-K) vs the fp32 oracle ==")
    from pallas_kernels.decode_attention import gpu_triton as dec_triton
    from pallas_kernels.decode_attention import reference as dec_ref

    def one(b, H, K, D, S, splits):
        key = jax.random.key(b * S + H)
        kq, kk, kv, kl = jax.random.split(key, 4)
        q = jax.random.normal(kq, (b, H, D), F32).astype(jnp.bfloat16)
        k = jax.random.normal(kk, (b, S, K, D), F32).astype(jnp.bfloat16)
        v = jax.random.normal(kv, (b, S, K, D), F32).astype(jnp.bfloat16)
        length = jax.random.randint(kl, (b,), 1, S + 1).at[0].set(S)
        start = (length // 7).at[-1].set(0)
        out = dec_triton.decode_attention(q, k, v, start, length, splits=splits, interpret=args.interpret)
        ref = dec_ref.decode_attention(*(a.astype(F32) for a in (q, k, v)), start, length)
        record("decode_attention", f"B{b} H{H} K{K} D{D} S{S} x{splits}", "o", out, ref, 1e-2)

    shapes = [(3, 8, 2, 64, 256, 2)] if args.interpret else [(16, 16, 4, 128, 8192, None),
                                                              (2, 64, 8, 128, 65536, None), (64, 16, 4, 128, 4096, 4)]
    for shape in shapes:
        guarded("decode_attention", lambda shape=shape: one(*shape))


def check_segment_attention(args):
    print("\n== pallas_kernels.segment_attention (packed-document flash attention) vs the fp32 reference ==")
    from pallas_kernels.segment_attention import Params
    from pallas_kernels.segment_attention import gpu_triton as seg_triton
    from pallas_kernels.segment_attention import reference as seg_ref

    def one(t, H, K, D, mean):
        key = jax.random.key(t + H + int(mean))
        kq, kk, kv, kd, ks = jax.random.split(key, 5)
        q = jax.random.normal(kq, (1, t, H, D), F32).astype(jnp.bfloat16)
        k = jax.random.normal(kk, (1, t, K, D), F32).astype(jnp.bfloat16)
        v = jax.random.normal(kv, (1, t, K, D), F32).astype(jnp.bfloat16)
        do = jax.random.normal(kd, (1, t, H, D), F32).astype(jnp.bfloat16)
        lengths = np.maximum(1, np.random.default_rng(t).exponential(mean, t).astype(int))
        seg = jnp.asarray(np.repeat(np.arange(1, t + 1), lengths)[:t][None].astype(np.int32))
        params = Params(interpret=args.interpret)

        def vjp(fn, *xs):
            o, f = jax.vjp(fn, *xs)
            return (o, *f(do.astype(o.dtype)))

        got = vjp(lambda q, k, v: seg_triton.segment_attention(q, k, v, seg, params=params), q, k, v)
        want = vjp(lambda q, k, v: seg_ref.segment_attention(q, k, v, seg), *(a.astype(F32) for a in (q, k, v)))
        for name, a, b in zip(("o", "dq", "dk", "dv"), got, want, strict=True):
            record("segment_attention", f"T{t} H{H} K{K} D{D} docs~{mean}", name, a, b, 1e-2)

    shapes = [(200, 4, 2, 32, 30)] if args.interpret else [(8192, 16, 4, 128, 2048), (8192, 16, 4, 128, 64),
                                                            (3000, 8, 8, 64, 500)]
    for shape in shapes:
        guarded("segment_attention", lambda shape=shape: one(*shape))
