"""The Mosaic GPU forward layouts that experiments/benchmarks/lightning_attention.py --mosaic-variants (row after row)
and lightning_vs_fla.py --mosaic-variants (in rounds) time side by side: spec strings joining bv32 / bv64 (value-column
tile), lean (the shared-memory-lean layout), slots2 / slots3, vd / st / rq / rm (the step with less SMEM traffic: decay
on V, the state transposed, Q in registers, the mask and row factors in registers), pers (a persistent grid), or
ws / ws3 (the warp-specialised kernel, gpu_mosaic_ws.py), e.g. "bv64,bv32lean,vdrqrm,ws3"."""

from __future__ import annotations

import argparse
import re

import jax

_VARIANT_TOKEN = re.compile(r"bv(32|64)|slots([23])|lean|ws([23]?)|(vd|st|rq|rm|pers)")
_FLAGS = {"vd": "vdecay", "st": "state_t", "rq": "q_regs", "rm": "m_regs", "pers": "persistent"}


def parse(text):
    """'bv32,bv32lean,slots3' -> [(row label, lightning_attention_fwd kwargs)] (argparse type)."""
    variants = []
    for spec in filter(None, (s.strip() for s in text.split(","))):
        kw, pos, ws = {"block_v": 64, "lean": False, "num_slots": 2}, 0, False
        while pos < len(spec):
            m = _VARIANT_TOKEN.match(spec, pos)
            if m is None:
                raise argparse.ArgumentTypeError(
                    f"bad mosaic variant {spec!r}: join bv32 / bv64, lean, slots2 / slots3 (e.g. bv32lean), "
                    "vd / st / rq / rm / pers, or ws / ws3 (warp-specialised)")
            if m.group(1):
                kw["block_v"] = int(m.group(1))
            elif m.group(2):
                kw["num_slots"] = int(m.group(2))
            elif m.group(4):
                kw[_FLAGS[m.group(4)]] = True
            elif m.group(3) is not None:
                ws = True
                kw["num_slots"] = int(m.group(3) or kw["num_slots"])
            else:
                kw["lean"] = True
            pos = m.end()
        if ws:  # gpu_mosaic_ws: block_v 64, no lean layout
            if kw["block_v"] != 64 or kw["lean"] or any(f in kw for f in _FLAGS.values()):
                raise argparse.ArgumentTypeError(f"bad mosaic variant {spec!r}: ws takes only slots2 / slots3")
            variants.append((f"mosaic_gpu fwd ws slots{kw['num_slots']}", {"ws": True, "num_slots": kw["num_slots"]}))
            continue
        label = f"mosaic_gpu fwd bv{kw['block_v']}" + (" lean" if kw["lean"] else "")
        label += f" slots{kw['num_slots']}" if kw["num_slots"] != 2 else ""
        label += "".join(f" {tok}" for tok, f in _FLAGS.items() if kw.get(f))
        variants.append((label, kw))
    return variants


def forward_fns(variants, *, interpret: bool):
    """[(label, jitted (q, k, v, decay) -> o)] for ``parse``'s variants (forward only, no ops adapter)."""
    from pallas_kernels.lightning_attention import gpu_mosaic, gpu_mosaic_ws

    out = []
    for label, kw in variants:
        def fwd(q, k, v, d, kw=kw):
            if kw.get("ws"):
                return gpu_mosaic_ws.lightning_attention_fwd_ws(q, k, v, d, interpret=interpret,
                                                                num_slots=kw["num_slots"])[0]
            return gpu_mosaic.lightning_attention_fwd(q, k, v, d, interpret=interpret, **kw)[0]

        out.append((label, jax.jit(fwd)))
    return out
