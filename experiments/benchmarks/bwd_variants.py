"""The Triton backward launch variants that experiments/benchmarks/lightning_attention.py --bwd-variants times side by
side: spec strings joining b<tile> (state tile), w<warps>, s<stages> (backward pipelining stages) and p<parts> (a
sequence split, split.split_sequence, forward and backward), or "default", e.g. "default,s2,b128w8p2"."""

from __future__ import annotations

import argparse
import functools
import re

import jax
import jax.numpy as jnp

_TOKEN = re.compile(r"^(?:b(\d+))?(?:w(\d+))?(?:s(\d+))?(?:p(\d+))?$")


def parse(text):
    """'default,s2,b32w8s3,b128w8p2' -> [(spec, gpu_triton.TritonParams.make kwargs, parts)] (argparse type); an
    omitted knob (all of them for "default") is the library's choice."""
    out = []
    for spec in filter(None, (x.strip() for x in text.split(","))):
        m = _TOKEN.match("" if spec == "default" else spec)
        if m is None:
            raise argparse.ArgumentTypeError(
                f"bad backward variant {spec!r}: default, or b<tile> w<warps> s<stages> p<parts> joined (e.g. s2, "
                "b128w8p2)")
        tile, warps, stages, parts = m.groups()
        kw = {}
        kw.update({"bwd_block": int(tile)} if tile else {})
        kw.update({"num_warps": int(warps)} if warps else {})
        kw.update({"num_stages": (3, int(stages))} if stages else {})
        out.append((spec, kw, int(parts or 1)))
    return out


def fns(variants, *, use_mosaic: bool, interpret: bool):
    """[(fwd+bwd label, spec, fwd+bwd fn(q, k, v, decay) -> o differentiable, jitted bwd fn(q, k, v, decay, do) ->
    grads)] for ``parse``'s variants: the Mosaic forward (``use_mosaic``; else the Triton one) with the Triton backward
    so launched, and that backward alone."""
    from pallas_kernels.lightning_attention import gpu_mosaic, gpu_triton, split

    out = []
    for spec, kw, parts in variants:
        params = gpu_triton.TritonParams.make(interpret=interpret, **kw)
        if use_mosaic:
            def fwd(q, k, v, d, s0, seg):
                del seg
                return gpu_mosaic.lightning_attention_fwd(q, k, v, d, initial_state=s0, interpret=interpret,
                                                          **gpu_mosaic.auto_layout(q.shape[0], q.shape[2], v.shape[-1]))
        else:
            fwd = functools.partial(gpu_triton.forward, params=params)
        diff = gpu_triton.with_triton_backward(fwd, params)

        def fwd_bwd(q, k, v, d, diff=diff, parts=parts):
            if parts == 1:
                return diff(q, k, v, d)[0]
            return split.split_sequence(diff, parts, q, k, v, d, initial_state=None, segment_ids=None)[0]

        def bwd(q, k, v, d, do, params=params, fwd_bwd=fwd_bwd, parts=parts):
            if parts == 1:
                dst = jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)
                return gpu_triton.backward(q, k, v, d, None, None, do, dst, params=params)[:3]
            # the pullback alone: its forward kernels' outputs are dead (the custom_vjp keeps only inputs), so JAX
            # drops them; the chunk states the split's backward needs are computed in XLA and stay
            return jax.vjp(lambda q, k, v: fwd_bwd(q, k, v, d), q, k, v)[1](do)

        out.append((f"{'mosaic_gpu' if use_mosaic else 'triton'} fwd + triton bwd {spec}", spec, fwd_bwd, jax.jit(bwd)))
    return out
