#!/usr/bin/env bash
# One 2-GPU device call (issue 12's last check, issue 14's decode / head measurements); logs and results under $OUT,
# returned as one tarball. Carry .whl (ml-collections wheel). Usage: bash experiments/benchmarks/decode_head_gpu.sh [S]
# (S: seconds the call may use, default 540; every step's limit is cut to what is left of it).
#   GPU0: continuous batching's random-head agreement with its two controls (a wider static batch; an fp32 twin)
#         -> the lightning decode op per step, looped vs unrolled (issue 14's decode targets, H=64)
#         -> the sampler-vs-learner agreement of each LM head (experiments/benchmarks/head_mismatch.py)
#   GPU1: profile_decode's parts with their loops unrolled (no while-loop iteration cost), then the whole decode step
#         and an empty loop iteration under three XLA command-buffer settings (default, off, + WHILE / CONDITIONAL)
#         -> the chunked LM-head cross-entropy vs the unchunked one (experiments/benchmarks/lm_head.py)
set -u -o pipefail
TOTAL=${1:-540}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi -L > "$OUT/nvidia_smi.txt"
END=$(($(date +%s) + TOTAL))
left() { local l=$((END - $(date +%s))); [ "$l" -lt "$1" ] && echo $((l > 1 ? l : 1)) || echo "$1"; }
PD="python3 experiments/profile_decode.py"
CB_ON="FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
(export CUDA_VISIBLE_DEVICES=0
 timeout "$(left 200)" python3 experiments/benchmarks/continuous_batching.py --out "$OUT" \
   --name continuous_batching_check_h200 --prompts 8 --slots 16 --max-new-tokens 256 --repeats 1 \
   > "$OUT/continuous_batching_check.log" 2>&1
 timeout "$(left 100)" python3 experiments/benchmarks/lightning_attention.py --shapes B1T4K --decode --skip-bwd \
   --skip-fla --skip-cudnn --impls reference,triton --out "$OUT/lightning_decode_h200.md" \
   > "$OUT/lightning_decode.log" 2>&1
 timeout "$(left 9999)" python3 experiments/benchmarks/head_mismatch.py --out "$OUT/head_mismatch_h200.md" \
   --budget-s "$(($(left 9999) - 100))" > "$OUT/head_mismatch.log" 2>&1) &
(export CUDA_VISIBLE_DEVICES=1
 timeout "$(left 150)" $PD --out "$OUT/profile_decode_unrolled_h200.md" --parts loop,moe,lightning_layer \
   --batches 1,16,32,64 --unroll 16 > "$OUT/profile_decode_unrolled.log" 2>&1
 for v in default off while; do
   case $v in default) F="";; off) F="--xla_gpu_enable_command_buffer=";; while) F="--xla_gpu_enable_command_buffer=$CB_ON";; esac
   XLA_FLAGS="$F" timeout "$(left 75)" $PD --out "$OUT/profile_decode_step_$v.md" --parts loop,step --batches 1,64 \
     --decode-impls auto > "$OUT/profile_decode_step_$v.log" 2>&1
 done
 timeout "$(left 9999)" python3 experiments/benchmarks/lm_head.py --out "$OUT/lm_head_ce_h200.json" \
   --sections chunked_ce --budget-s "$(($(left 9999) - 60))" > "$OUT/lm_head_ce.log" 2>&1) &
wait
tail -n 30 "$OUT"/*.log
(cd "$OUT" && tar czf /tmp/decode_head.tgz --exclude='*.tgz' . && find . -type f ! -name '*.tgz' -delete \
  && mv /tmp/decode_head.tgz .)
ls -la "$OUT"
