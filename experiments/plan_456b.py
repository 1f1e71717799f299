"""Ahead-of-time memory plan for the full 456B MiniMax-M1: train step and decode step, per device.

Nothing is allocated: the model, optimizer state, batch and cache exist only as ShapeDtypeStructs
carrying their shardings (from m1jax.sharding's rules table); ``jax.jit(...).lower(...).compile()``
runs XLA's SPMD partitioner and buffer assignment for ONE device's program and
``compiled.memory_analysis()`` reports its argument / output / temporary bytes.

On a CPU-only machine the mesh is made of fake CPU devices (the script re-executes itself with
``--xla_force_host_platform_device_count``); the partitioning is what a GPU / TPU mesh of that
shape gets, but temporaries come from the CPU compiler's buffer assignment and the CPU path of the
kernels (lightning attention = the jnp reference, whose scan saves per-block residuals for the
backward pass), so treat "temp" as an estimate of activation memory, not a measurement.

On CPU, ``jax.lax.ragged_dot`` (the grouped expert matmul) lowers to a dense masked product over all
local experts (E_local x the memory of the real output). TPUs lower it natively and GPUs to a grouped
GEMM, so by default (``--ragged-standin``) the plan swaps in a stand-in of the same shapes and
FLOPs (every row times one expert's weights): its buffers are those of a true grouped GEMM.

The decode step is compiled with all 80 layers. Compiling the 80 (unrolled) layers of the train step
takes ~15 minutes on 2 CPU cores, so layer groups of 8 and 16 (the 7 lightning + 1 softmax period
of M1) are compiled and every per-device quantity is fitted as a + b * layers and extrapolated to
80 layers (exact for parameter / optimizer bytes, which are linear in the layer count; an estimate
for temporaries); ``--full-train`` also compiles the real 80-layer train step (remat on) to check it.

    python experiments/plan_456b.py --full-train          # writes experiments/results/plan_456b.md
    python experiments/plan_456b.py --train-mesh fsdp=16,expert=8,tensor=8 --seq 4096 --out /tmp/plan.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "plan_456b.md")
GIB = 2**30


def parse_mesh(text: str) -> dict:
    sizes = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        sizes[name.strip()] = int(value)
    return sizes


def ensure_devices(n: int):
    """Re-run this script with ``n`` fake CPU devices unless jax already has them."""
    if os.environ.get("M1JAX_PLAN_CHILD"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    # -O0 CPU code generation: the same buffer assignment (checked at 8 layers), several times faster.
    flags += (f" --xla_force_host_platform_device_count={n}"
              " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip(), M1JAX_PLAN_CHILD="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))


def config_for(layers: int, param_dtype: str, dtype: str):
    from m1jax.config import ModelConfig, hybrid_layout

    return ModelConfig.minimax_m1_456b(num_hidden_layers=layers, attn_type_list=hybrid_layout(layers),
                                       param_dtype=param_dtype, dtype=dtype)


def shard_bytes(abstract_tree) -> int:
    """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings."""
    import jax

    total = 0
    for x in jax.tree.leaves(abstract_tree):
        shard = x.sharding.shard_shape(x.shape)
        total += math.prod(shard) * x.dtype.itemsize
    return total


def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def ragged_dot_standin(lhs, rhs, group_sizes, precision=None, preferred_element_type=None, **kwargs):
    """Shapes, FLOPs and buffers of ragged_dot(lhs [m, k], rhs [g, k, n]) -> [m, n]; values are NOT right."""
    import jax.numpy as jnp

    del group_sizes, kwargs
    return jnp.einsum("mk,kn->mn", lhs, rhs[0], precision=precision, preferred_element_type=preferred_element_type)


def plan_train(layers: int, mesh, args, remat: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from m1jax import MiniMaxM1
    from m1jax import sharding as sh
    from m1jax.train.config import default_config
    from m1jax.train.optimizer import make_optimizer
    from m1jax.train.step import abstract_train_state, make_train_step, set_kernels

    config = config_for(layers, args.param_dtype, args.dtype)
    skeleton = nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0)))
    set_kernels(skeleton, moe="ep", lightning="auto")
    skeleton.remat = remat
    graphdef, abstract, _ = nnx.split(skeleton, nnx.Param, ...)
    abstract = nnx.to_pure_dict(abstract)
    cfg = default_config(config)
    tx, schedule = make_optimizer(cfg.optim, 1000)
    p_shard = sh.param_shardings(skeleton, mesh)
    state = abstract_train_state(abstract, tx)
    state_shard = {"params": p_shard, "opt_state": sh.state_shardings(state["opt_state"], p_shard, mesh),
                   "step": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())}
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shard)
    B, T = args.batch, args.seq
    batch_shard = jax.sharding.NamedSharding(mesh, sh.logical_to_spec(("batch", "seq"), (B, T), mesh))
    batch = {k: jax.ShapeDtypeStruct((B, T), jnp.float32 if k == "loss_mask" else jnp.int32, sharding=batch_shard)
             for k in ("tokens", "segment_ids", "positions", "loss_mask")}
    step = make_train_step(graphdef, tx, schedule, config, grad_accum_steps=1)
    step = jax.jit(getattr(step, "__wrapped__", step), in_shardings=(state_shard, batch_shard),
                   out_shardings=(state_shard, None), donate_argnums=0)
    t0 = time.perf_counter()
    with sh.use_mesh(mesh):
        compiled = step.lower(state, batch).compile()
    tokens_per_device = math.prod(batch_shard.shard_shape((B, T)))
    return {"layers": layers, "remat": remat, "compile_s": time.perf_counter() - t0,
            "tokens_per_device": tokens_per_device,
            "params": shard_bytes(state["params"]), "optimizer": shard_bytes(state["opt_state"]),
            "batch": shard_bytes(batch), **memory(compiled)}


def plan_decode(layers: int, mesh, args) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from m1jax import MiniMaxM1
    from m1jax import sharding as sh
    from m1jax.model.cache import init_cache

    config = config_for(layers, args.serve_dtype, args.serve_dtype)
    skeleton = nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0)))
    for layer in skeleton.layers:
        layer.block_sparse_moe.impl = "ep"
    graphdef, params = nnx.split(skeleton, nnx.Param)
    params = sh.abstract_params(skeleton, mesh)
    B, S = args.decode_batch, args.decode_len
    cache = jax.eval_shape(lambda: init_cache(config, B, S))
    c_shard = sh.cache_shardings(cache, mesh)
    cache = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), cache, c_shard)
    tok_shard = jax.sharding.NamedSharding(mesh, sh.logical_to_spec(("batch", None), (B, 1), mesh))
    tokens = jax.ShapeDtypeStruct((B, 1), jnp.int32, sharding=tok_shard)

    def decode(params, cache, tokens):
        out = nnx.merge(graphdef, params).forward(tokens, cache=cache)
        return out.logits[:, -1], out.cache

    step = jax.jit(decode, in_shardings=(sh.param_shardings(skeleton, mesh), c_shard, tok_shard),
                   out_shardings=(None, c_shard), donate_argnums=1)
    t0 = time.perf_counter()
    with sh.use_mesh(mesh):
        compiled = step.lower(params, cache, tokens).compile()
    return {"layers": layers, "compile_s": time.perf_counter() - t0, "params": shard_bytes(params),
            "cache": shard_bytes(cache), **memory(compiled)}


def extrapolate(rows: list[dict], target: int) -> dict:
    """Fit every numeric field as a + b * layers through the two smallest compiled layer counts and
    evaluate it at ``target`` (with one point: proportional scaling)."""
    rows = sorted(rows, key=lambda r: r["layers"])
    lo, hi = rows[0], rows[1] if len(rows) > 1 else None
    out = {}
    for k, v in lo.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or k == "compile_s":
            out[k] = v
        elif hi is None:
            out[k] = v * target / lo["layers"]
        else:
            out[k] = v + (hi[k] - v) / (hi["layers"] - lo["layers"]) * (target - lo["layers"])
    out.update(layers=target, extrapolated=f"from {', '.join(str(r['layers']) for r in rows[:2])} layers")
    return out


def table(rows: list[dict], fields: list[tuple[str, str]]) -> str:
    lines = ["| layers | " + " | ".join(h for _, h in fields) + " |", "|---" * (len(fields) + 1) + "|"]
    for r in rows:
        label = f"{int(r['layers'])} ({r['extrapolated']})" if r.get("extrapolated") else f"{r['layers']} (compiled)"
        cells = [("" if r.get("extrapolated") else f"{r[k]:.0f}") if k == "compile_s" else f"{r[k] / GIB:.2f}"
                 for k, _ in fields]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=256)
    ap.add_argument("--train-mesh", default="fsdp=8,expert=4,tensor=8")
    ap.add_argument("--decode-mesh", default="expert=4,tensor=8,fsdp=1", help="on the first devices")
    ap.add_argument("--layers", default="8,16", help="train layer counts compiled, then extrapolated to 80")
    ap.add_argument("--full-train", action="store_true", help="also compile the 80-layer train step (remat on)")
    ap.add_argument("--batch", type=int, default=32, help="global train batch (sequences)")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--param-dtype", default="float32", help="training master weights (and Adam moments)")
    ap.add_argument("--dtype", default="bfloat16", help="training activations")
    ap.add_argument("--serve-dtype", default="bfloat16")
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--decode-len", type=int, default=32768, help="KV-cache length")
    ap.add_argument("--remat", default="both", choices=("both", "on", "off"),
                    help="train with each decoder layer recomputed in the backward pass (MiniMaxM1.remat)")
    ap.add_argument("--ragged-standin", action=argparse.BooleanOptionalAction, default=True,
                    help="replace ragged_dot by a same-shape stand-in (see the module docstring)")
    ap.add_argument("--skip", default="", help="'train' or 'decode'")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--append", action="store_true", help="add this run's tables to --out")
    args = ap.parse_args()
    ensure_devices(args.devices)

    import jax

    from m1jax import sharding as sh

    if args.ragged_standin:
        jax.lax.ragged_dot = ragged_dot_standin
    layer_counts = [int(x) for x in args.layers.split(",")]
    remats = {"both": (True, False), "on": (True,), "off": (False,)}[args.remat]
    jobs = []
    for r in remats:
        counts = layer_counts + ([80] if args.full_train and r and 80 not in layer_counts else [])
        jobs.append((f"train_remat_{'on' if r else 'off'}", "train", counts,
                     lambda L, m, a, r=r: plan_train(L, m, a, r)))
    jobs.append(("decode", "decode", [80], plan_decode))
    report = {}
    meshes = {"train": parse_mesh(args.train_mesh), "decode": parse_mesh(args.decode_mesh)}
    for name, kind, counts, fn in jobs:
        if kind in args.skip:
            continue
        sizes = meshes[kind]
        n = math.prod(sizes.values()) if "fsdp" in sizes else args.devices
        mesh = sh.make_mesh(sh.MeshConfig(**sizes), devices=jax.devices()[:n])
        report[name] = []
        for layers in counts:
            row = fn(layers, mesh, args)
            print(json.dumps({name: row}), flush=True)
            report[name].append(row)
        meshes[kind] = {k: v for k, v in mesh.shape.items() if v > 1}
    write_report(args, meshes, report)


def write_report(args, meshes, report):
    import jax

    fields_train = [("params", "params GiB"), ("optimizer", "optimizer GiB"), ("argument", "arguments GiB"),
                    ("temp", "temp (activations, grads) GiB"), ("peak", "peak GiB"), ("compile_s", "compile s")]
    fields_decode = [("params", "params GiB"), ("cache", "cache GiB"), ("argument", "arguments GiB"),
                     ("temp", "temp GiB"), ("peak", "peak GiB"), ("compile_s", "compile s")]
    header = [
        "# MiniMax-M1 456B: per-device memory plan (ahead-of-time compile, nothing allocated)",
        "",
        f"Generated by `experiments/plan_456b.py` on {datetime.date.today()} with jax {jax.__version__}, "
        f"{platform.machine()} CPU ({os.cpu_count()} cores), {jax.device_count()} fake CPU devices "
        "(`--xla_force_host_platform_device_count`). Command: `python " + " ".join(sys.argv) + "`.",
        "",
        "Per device. `params` / `optimizer` / `cache` are the exact shard sizes from the shardings; "
        "`arguments`, `temp` come from `compiled.memory_analysis()`; `peak` = arguments + outputs - "
        "donated aliases + temp. Temporaries are the CPU compiler's buffer assignment with the CPU "
        "(jnp reference) lightning kernel: an estimate of activation memory."
        + (" The grouped expert matmul is the same-shape stand-in (see the script)." if args.ragged_standin else ""),
        "",
    ]
    parts = []
    for name, rows in report.items():
        kind = "decode" if name == "decode" else "train"
        fields = fields_decode if kind == "decode" else fields_train
        if kind == "train":
            rows = sorted(rows, key=lambda r: r["layers"])
            small = [r for r in rows if r["layers"] != 80]
            if small:
                rows = [*rows, extrapolate(small, 80)]
            toks = args.batch * args.seq
            remat = "each decoder layer rematerialised" if rows[0]["remat"] else "no rematerialisation"
            head = (f"## Train step, {remat} (AdamW, {args.param_dtype} params and moments, {args.dtype} "
                    f"activations, expert-parallel MoE)\n\nMesh {meshes[kind]}; global batch {args.batch} x "
                    f"{args.seq} = {toks} tokens, {rows[0]['tokens_per_device']:.0f} per device.")
        else:
            head = (f"## Decode step (one token, {args.serve_dtype} weights and KV cache, fp32 lightning states)"
                    f"\n\nMesh {meshes[kind]}; batch {args.decode_batch}, KV-cache length {args.decode_len}.")
        parts += [head, "", table(rows, fields), ""]
    if args.append:
        header = ["", "---", "", f"Command: `python {' '.join(sys.argv)}`.", ""]
    parts = header + parts
    with open(args.out, "a" if args.append else "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
