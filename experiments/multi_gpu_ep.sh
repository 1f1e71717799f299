#!/usr/bin/env bash
# One training config run twice from the same seed and data: on one device, then expert-parallel over
# every visible device (mesh expert=N, MoE "ep" path). Prints both loss curves, step times and the
# largest loss difference. Usage: experiments/multi_gpu_ep.sh PRESET STEPS OUTDIR [extra --config flags]
set -euo pipefail
preset=$1; steps=$2; out=$3; shift 3
mkdir -p "$out"
n=$(python3 -c "import jax; print(jax.device_count())")
common=(--config=experiments/pretrain.py:"$preset" --config.steps="$steps" --config.checkpoint.every=1000000 "$@")
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES_ONE:-0} JAX_NUM_CPU_DEVICES=1 \
  python3 -m m1jax.cli.main train "${common[@]}" --config.mesh.fsdp=1 --workdir="$out/one" > "$out/one.log" 2>&1
python3 -m m1jax.cli.main train "${common[@]}" --config.mesh.fsdp=1 --config.mesh.expert="$n" \
  --config.kernels.moe=ep --workdir="$out/ep$n" > "$out/ep.log" 2>&1
python3 - "$out" "$n" <<'PY'
import json, sys
out, n = sys.argv[1], sys.argv[2]
rows = {name: [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if '"loss"' in l] for name in ("one", f"ep{n}")}
for name, r in rows.items():
    print(name, "loss", [round(x["loss"], 5) for x in r])
    print(name, "step_s", [round(x["step_time"], 4) for x in r],
          "tokens/s", [round(x.get("tokens_per_s", 0)) for x in r], "mfu", [x.get("mfu") for x in r],
          "peak GiB", [x.get("peak_memory_gib") for x in r])
d = max(abs(a["loss"] - b["loss"]) for a, b in zip(rows["one"], rows[f"ep{n}"]))
print("max |loss_one - loss_ep| =", d)
PY
