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
Likewise XLA:CPU cannot compile ``jax.lax.ragged_all_to_all`` (the GPU / TPU expert-parallel exchange),
so by default (``--exchange-standin``) the plan compiles the ragged exchange with a stand-in of the same
input and output shapes and one collective (an all-gather out, a reduce-scatter back) instead of the
CPU's dense all_to_all emulation (whose per-destination slots add a buffer of the receive size).

The decode step is compiled with all 80 layers. Compiling the 80 (unrolled) layers of the train step
takes ~15 minutes on 2 CPU cores, so layer groups of 8 and 16 (the 7 lightning + 1 softmax period
of M1) are compiled and every per-device quantity is fitted as a + b * layers and extrapolated to
80 layers (exact for parameter / optimizer bytes, which are linear in the layer count; an estimate
for temporaries); ``--full-train`` also compiles the real 80-layer train step (remat on) to check it.
Each ``--variant MESH[/batch=B][/seq=T][/accum=A]`` is one train configuration (A micro-batches of B / A
sequences per step, a lax.scan in the train step); the report starts with one line per variant: its
80-layer per-device memory and whether it fits 80 GB / 141 GB devices.

XLA:CPU's memory behaviour differs from a GPU's in ways that inflate the training temporaries (seen in
the compiler's buffer-assignment dumps, experiments/results/plan_456b.md's notes): bf16 collectives run
in f32, the opt-barriers that keep a rematerialised layer from sharing values with the forward pass are
removed before common-subexpression elimination and scheduling, weight-gradient matmuls may be
scheduled late (their [rows, d] inputs stay live), and there is no memory-limited rematerialisation.

    python experiments/plan_456b.py                       # writes experiments/results/plan_456b.md
    python experiments/plan_456b.py --variant fsdp=16,expert=4,tensor=8/batch=64/seq=2048 \
        --variant fsdp=8,expert=4,tensor=8/batch=128/seq=2048/accum=4 --skip decode --out /tmp/plan.md
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

# XLA:CPU's schedulers, chosen by --xla_cpu_enable_concurrency_optimized_scheduler (a process-wide flag; per-compile
# compiler_options do not reach it). Measured here: either one can need up to 1.7x the other's temporaries.
SCHEDULERS = {"list": "false", "concurrency": "true"}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "plan_456b.md")
GIB = 2**30


def parse_mesh(text: str) -> dict:
    sizes = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        sizes[name.strip()] = int(value)
    return sizes


def ensure_devices(n: int, scheduler: str):
    """Re-run this script with ``n`` fake CPU devices unless jax already has them."""
    if os.environ.get("M1JAX_PLAN_CHILD"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    # -O0 CPU code generation: the same buffer assignment (checked at 8 layers), several times faster.
    flags += (f" --xla_force_host_platform_device_count={n}"
              " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
              f" --xla_cpu_enable_concurrency_optimized_scheduler={SCHEDULERS[scheduler]}")
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


def ragged_all_to_all_standin(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                              axis_name, axis_index_groups=None):
    """Shapes and buffers of ragged_all_to_all(operand [m, ...] -> output [R, ...]) with one collective of
    the same sizes (R = n m: all-gather; m = n R: reduce-scatter); values are NOT right."""
    import jax

    del input_offsets, send_sizes, output_offsets, recv_sizes, axis_index_groups
    if output.shape[0] >= operand.shape[0]:
        return output + jax.lax.all_gather(operand, axis_name, tiled=True)
    return output + jax.lax.psum_scatter(operand, axis_name, scatter_dimension=0, tiled=True)


def plan_train(layers: int, mesh, args, remat: bool, variant: dict) -> dict:
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
    B, T, A = variant["batch"], variant["seq"], variant["accum"]
    batch_shard = jax.sharding.NamedSharding(mesh, sh.logical_to_spec(("batch", "seq"), (B, T), mesh))
    batch = {k: jax.ShapeDtypeStruct((B, T), jnp.float32 if k == "loss_mask" else jnp.int32, sharding=batch_shard)
             for k in ("tokens", "segment_ids", "positions", "loss_mask")}
    step = make_train_step(graphdef, tx, schedule, config, grad_accum_steps=A)
    step = jax.jit(getattr(step, "__wrapped__", step), in_shardings=(state_shard, batch_shard),
                   out_shardings=(state_shard, None), donate_argnums=0)
    t0 = time.perf_counter()
    with sh.use_mesh(mesh):
        compiled = step.lower(state, batch).compile()
    tokens_per_device = math.prod(batch_shard.shard_shape((B, T)))
    return {"layers": layers, "remat": remat, "compile_s": time.perf_counter() - t0,
            "tokens_per_device": tokens_per_device, "micro_tokens_per_device": tokens_per_device // A,
            "params": shard_bytes(state["params"]), "optimizer": shard_bytes(state["opt_state"]),
            "batch": shard_bytes(batch), "scheduler": args.scheduler, **memory(compiled)}


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


def parse_variant(text: str, args) -> dict:
    """'fsdp=16,expert=4,tensor=8/batch=64/seq=2048/accum=4' (all but the mesh optional) -> dict."""
    mesh, *rest = text.split("/")
    out = {"mesh": parse_mesh(mesh), "batch": args.batch, "seq": args.seq, "accum": args.grad_accum}
    for part in rest:
        key, _, value = part.partition("=")
        if key not in ("batch", "seq", "accum"):
            raise ValueError(f"--variant {text!r}: unknown field {key!r} (batch, seq, accum)")
        out[key] = int(value)
    if out["batch"] % out["accum"]:
        raise ValueError(f"--variant {text!r}: batch {out['batch']} is not a multiple of accum {out['accum']}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-mesh", default="fsdp=8,expert=4,tensor=8")
    ap.add_argument("--variant", action="append", default=[],
                    help="train configurations to plan, each 'MESH[/batch=B][/seq=T][/accum=A]' (repeatable; "
                         "default: --train-mesh with --batch, --seq, --grad-accum)")
    ap.add_argument("--decode-mesh", default="expert=4,tensor=8,fsdp=1", help="on the first devices")
    ap.add_argument("--layers", default="8,16", help="train layer counts compiled, then extrapolated to 80")
    ap.add_argument("--full-train", action="store_true", help="also compile the 80-layer train step (remat on)")
    ap.add_argument("--batch", type=int, default=32, help="global train batch (sequences)")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (a lax.scan)")
    ap.add_argument("--param-dtype", default="float32", help="training master weights (and Adam moments)")
    ap.add_argument("--dtype", default="bfloat16", help="training activations")
    ap.add_argument("--serve-dtype", default="bfloat16")
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--decode-len", type=int, default=32768, help="KV-cache length")
    ap.add_argument("--remat", default="on", choices=("both", "on", "off"),
                    help="train with each decoder layer recomputed in the backward pass (MiniMaxM1.remat)")
    ap.add_argument("--ragged-standin", action=argparse.BooleanOptionalAction, default=True,
                    help="replace ragged_dot by a same-shape stand-in (see the module docstring)")
    ap.add_argument("--exchange-standin", action=argparse.BooleanOptionalAction, default=True,
                    help="compile the ragged (GPU / TPU) expert exchange with a same-shape stand-in (see above)")
    ap.add_argument("--scheduler", default="list", choices=tuple(SCHEDULERS),
                    help="XLA:CPU's scheduler: its memory-minimising list scheduler or the concurrency-optimized one")
    ap.add_argument("--skip", default="", help="'train' or 'decode'")
    ap.add_argument("--summarize", nargs="+", metavar="LOG",
                    help="compile nothing: print the summary table of these runs' stdout (JSON lines), per train "
                         "configuration the scheduler with the lower 80-layer peak")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--append", action="store_true", help="add this run's tables to --out")
    args = ap.parse_args()
    if args.summarize:
        print(summary(best_runs(args.summarize)))
        return
    variants = [parse_variant(v, args) for v in args.variant or [args.train_mesh]]
    decode_mesh = parse_mesh(args.decode_mesh)
    devices = max([math.prod(v["mesh"].values()) for v in variants] + [math.prod(decode_mesh.values())])
    ensure_devices(devices, args.scheduler)

    import jax

    from m1jax import sharding as sh

    if args.ragged_standin:
        jax.lax.ragged_dot = ragged_dot_standin
    if args.exchange_standin:
        from m1jax.model import moe_ep

        jax.lax.ragged_all_to_all = ragged_all_to_all_standin
        moe_ep.default_exchange = lambda: "ragged"
    layer_counts = [int(x) for x in args.layers.split(",")]
    remats = {"both": (True, False), "on": (True,), "off": (False,)}[args.remat]
    trains = []
    if "train" not in args.skip:
        for variant in variants:
            n = math.prod(variant["mesh"].values())
            mesh = sh.make_mesh(sh.MeshConfig(**variant["mesh"]), devices=jax.devices()[:n])
            for remat in remats:
                counts = layer_counts + ([80] if args.full_train and remat and 80 not in layer_counts else [])
                rows = []
                for layers in counts:
                    rows.append(plan_train(layers, mesh, args, remat, variant))
                    print(json.dumps({"train": variant, **rows[-1]}), flush=True)
                trains.append((dict(variant, mesh={k: v for k, v in mesh.shape.items() if v > 1}), remat, rows))
    decode = None
    if "decode" not in args.skip:
        mesh = sh.make_mesh(sh.MeshConfig(**decode_mesh), devices=jax.devices()[:math.prod(decode_mesh.values())])
        decode = ({k: v for k, v in mesh.shape.items() if v > 1}, [plan_decode(80, mesh, args)])
        print(json.dumps({"decode": decode[1][0]}), flush=True)
    write_report(args, trains, decode)


def train_rows(rows: list[dict]) -> list[dict]:
    """Compiled rows in layer order plus their extrapolation to 80 layers (when 80 was not compiled)."""
    rows = sorted(rows, key=lambda r: r["layers"])
    small = [r for r in rows if r["layers"] != 80]
    return [*rows, extrapolate(small, 80)] if small else rows


def best_runs(logs: list[str]) -> list:
    """(variant, remat, rows) per train configuration found in the logs (this script's stdout), keeping the
    scheduler whose rows extrapolate to the lower 80-layer peak."""
    runs: dict = {}
    for path in logs:
        with open(path) as f:
            for line in f:
                if line.startswith('{"train"'):
                    row = json.loads(line)
                    key = (json.dumps(row.pop("train")), row["remat"])
                    runs.setdefault(key, {}).setdefault(row["scheduler"], []).append(row)
    return [(json.loads(variant), remat, min(by.values(), key=lambda rows: train_rows(rows)[-1]["peak"]))
            for (variant, remat), by in runs.items()]


def summary(trains) -> str:
    """One line per train configuration: its 80-layer figures (compiled where 80 layers were, else extrapolated)."""
    lines = ["| mesh | devices | tokens / device / step (micro-batch x accum) | params GiB | optimizer GiB | "
             "temp GiB | peak GiB | fits 80 GB? | fits 141 GB? | 80 layers | XLA:CPU scheduler |", "|---" * 11 + "|"]
    for variant, remat, rows in trains:
        r = next(x for x in reversed(train_rows(rows)) if x["layers"] == 80)
        mesh = " x ".join(f"{k} {v}" for k, v in variant["mesh"].items())
        toks = f"{r['tokens_per_device']:.0f} ({r['micro_tokens_per_device']:.0f} x {variant['accum']})"
        fits = ["yes" if r["peak"] <= gb * 1e9 else "no" for gb in (80, 141)]
        lines.append(f"| {mesh}{'' if remat else ' (no remat)'} | {math.prod(variant['mesh'].values())} | {toks} | "
                     f"{r['params'] / GIB:.2f} | {r['optimizer'] / GIB:.2f} | {r['temp'] / GIB:.1f} | "
                     f"{r['peak'] / GIB:.1f} | {fits[0]} | {fits[1]} | {r.get('extrapolated') or 'compiled'} | "
                     f"{r['scheduler']} |")
    return "\n".join(lines)


def write_report(args, trains, decode):
    import jax

    fields_train = [("params", "params GiB"), ("optimizer", "optimizer GiB"), ("argument", "arguments GiB"),
                    ("temp", "temp (activations, grads) GiB"), ("peak", "peak GiB"), ("compile_s", "compile s")]
    fields_decode = [("params", "params GiB"), ("cache", "cache GiB"), ("argument", "arguments GiB"),
                     ("temp", "temp GiB"), ("peak", "peak GiB"), ("compile_s", "compile s")]
    command = "python " + " ".join(sys.argv)
    if args.append:
        parts = ["", "---", "", f"Command: `{command}`.", ""]
    else:
        parts = [
            "# MiniMax-M1 456B: per-device memory plan (ahead-of-time compile, nothing allocated)",
            "",
            f"Generated by `experiments/plan_456b.py` on {datetime.date.today()} with jax {jax.__version__}, "
            f"{platform.machine()} CPU ({os.cpu_count()} cores), {jax.device_count()} fake CPU devices "
            f"(`--xla_force_host_platform_device_count`). Command: `{command}`.",
            "",
            "Per device. `params` / `optimizer` / `cache` are the exact shard sizes from the shardings; "
            "`arguments`, `temp` come from `compiled.memory_analysis()`; `peak` = arguments + outputs - "
            "donated aliases + temp. Temporaries are the CPU compiler's buffer assignment with the CPU "
            "(jnp reference) lightning kernel: an estimate of activation memory."
            + (" The grouped expert matmul is the same-shape stand-in (see the script)." if args.ragged_standin else "")
            + (" The expert exchange is the same-shape ragged all-to-all stand-in." if args.exchange_standin else "")
            + f" XLA:CPU's {args.scheduler} scheduler.",
            "",
        ]
    if trains:
        parts += [f"## Train step, 80 layers (AdamW, {args.param_dtype} params and moments, {args.dtype} "
                  "activations, expert-parallel MoE)", "", "`fits`: peak <= 80e9 / 141e9 bytes.", "",
                  summary(trains), ""]
    for variant, remat, rows in trains:
        how = "each decoder layer rematerialised" if remat else "no rematerialisation"
        parts += [f"### {variant['mesh']}, {how}: global batch {variant['batch']} x {variant['seq']}, "
                  f"{variant['accum']} micro-batch(es), {rows[0]['tokens_per_device']:.0f} tokens per device", "",
                  table(train_rows(rows), fields_train), ""]
    if decode is not None:
        mesh, rows = decode
        parts += [f"## Decode step (one token, {args.serve_dtype} weights and KV cache, fp32 lightning states)", "",
                  f"Mesh {mesh}; batch {args.decode_batch}, KV-cache length {args.decode_len}.", "",
                  table(rows, fields_decode), ""]
    with open(args.out, "a" if args.append else "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
