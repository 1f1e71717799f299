#!/usr/bin/env bash
# Issue 12's whole-model GPU measurements on a 2-GPU device machine, two calls (the device tool's 10-minute limit),
# each GPU running one benchmark process; every log and JSON goes to $OUT. Carry .whl (ml-collections wheel).
#   A: GPU0 decode latency of the hybrid 1b model, GPU1 of its all-softmax twin (long_generation.py --parts decode)
#   B: GPU0 prefill time + compiled memory (both models), GPU1 continuous batching vs static, then the LM head
#   C: A again after the decode kernel split each row's valid blocks (not the whole cache) and the decode step moved
#      into an on-device loop; GPU1 then runs continuous batching small enough to reach its random-head check
#   D: (not run yet) GPU0 the model's cached paths (experiments/check_gpu_model.py: the mask-free cuDNN prefill, the
#      decode kernel in the model) and the decode kernel vs its oracle, then prefill time + memory again (the n x n
#      mask is gone); GPU1 continuous batching small enough to reach its random-head check, then where a decode
#      step's time goes (experiments/profile_decode.py: each part alone at batch 1, 16, 64)
# Then here: python experiments/benchmarks/long_generation.py --merge <A's and B's json> --out experiments/results \
#   --name long_generation_h200
set -u -o pipefail
PART=${1:?A or B}; BUDGET=${2:-380}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi -L > "$OUT/nvidia_smi_$PART.txt"
LG="python3 experiments/benchmarks/long_generation.py --out $OUT"
LIM=$((BUDGET + 60))
if [ "$PART" = A ]; then  # the target cases (4K and 64K) first, so a spent budget skips the others
  CUDA_VISIBLE_DEVICES=0 timeout "$LIM" $LG --parts decode --models hybrid --contexts 4k,64k,16k,1k,128k \
    --budget-s "$BUDGET" --name lg_decode_hybrid > "$OUT/lg_decode_hybrid.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 timeout "$LIM" $LG --parts decode --models softmax --contexts 4k,64k,16k,1k \
    --budget-s "$BUDGET" --name lg_decode_softmax > "$OUT/lg_decode_softmax.log" 2>&1 &
elif [ "$PART" = C ]; then
  CUDA_VISIBLE_DEVICES=0 timeout "$LIM" $LG --parts decode --models hybrid --contexts 4k,64k,16k,1k,128k \
    --budget-s "$BUDGET" --name lg_decode_hybrid_loop > "$OUT/lg_decode_hybrid_loop.log" 2>&1 &
  (CUDA_VISIBLE_DEVICES=1 timeout "$((BUDGET - 20))" $LG --parts decode --models softmax --contexts 4k,64k,16k,1k \
     --budget-s "$((BUDGET - 120))" --name lg_decode_softmax_loop > "$OUT/lg_decode_softmax_loop.log" 2>&1
   CUDA_VISIBLE_DEVICES=1 timeout 100 python3 experiments/benchmarks/continuous_batching.py --out "$OUT" \
     --name continuous_batching_check_h200 --prompts 8 --slots 16 --max-new-tokens 512 --repeats 1 \
     > "$OUT/continuous_batching_check.log" 2>&1) &
elif [ "$PART" = D ]; then  # every step's limit is cut to what is left of BUDGET + 240 s, so the tar below runs
  END=$(($(date +%s) + BUDGET + 240))
  left() { local l=$((END - $(date +%s))); [ "$l" -lt "$1" ] && echo $((l > 1 ? l : 1)) || echo "$1"; }
  (CUDA_VISIBLE_DEVICES=0 timeout "$(left 150)" python3 experiments/check_gpu_model.py --out "$OUT/check_gpu_model.md" \
     > "$OUT/check_gpu_model.log" 2>&1
   CUDA_VISIBLE_DEVICES=0 timeout "$(left 120)" python3 experiments/check_gpu_kernels.py --only decode_attention \
     --out "$OUT/check_decode_attention.md" > "$OUT/check_decode_attention.log" 2>&1
   CUDA_VISIBLE_DEVICES=0 timeout "$(left 9999)" $LG --parts prefill,memory --prompts 4k,64k,16k,1k \
     --budget-s "$(($(left 9999) - 90))" --name lg_prefill_nomask > "$OUT/lg_prefill_nomask.log" 2>&1) &
  (CUDA_VISIBLE_DEVICES=1 timeout "$(left 150)" python3 experiments/benchmarks/continuous_batching.py --out "$OUT" \
     --name continuous_batching_check_h200 --prompts 8 --slots 16 --max-new-tokens 512 --repeats 1 \
     > "$OUT/continuous_batching_check.log" 2>&1
   CUDA_VISIBLE_DEVICES=1 timeout "$(left 9999)" python3 experiments/profile_decode.py \
     --out "$OUT/profile_decode_h200.md" --budget-s "$(($(left 9999) - 90))" > "$OUT/profile_decode.log" 2>&1) &
else
  CUDA_VISIBLE_DEVICES=0 timeout "$LIM" $LG --parts prefill,memory --prompts 4k,64k,16k,1k \
    --budget-s "$BUDGET" --name lg_prefill > "$OUT/lg_prefill.log" 2>&1 &
  (CUDA_VISIBLE_DEVICES=1 timeout "$((BUDGET - 30))" python3 experiments/benchmarks/continuous_batching.py --out "$OUT" \
     --name continuous_batching_h200 --budget-s "$((BUDGET - 120))" --repeats 2 > "$OUT/continuous_batching.log" 2>&1
   CUDA_VISIBLE_DEVICES=1 timeout 80 python3 experiments/benchmarks/lm_head.py --out "$OUT/lm_head_h200.json" --sections head \
     > "$OUT/lm_head.log" 2>&1) &
fi
wait
tail -n 25 "$OUT"/*.log
ls -la "$OUT"
# the device tool returns only a few files: everything goes back in one tarball
(cd "$OUT" && tar czf /tmp/lg_$PART.tgz --exclude='*.tgz' . && find . -type f ! -name '*.tgz' -delete && mv /tmp/lg_$PART.tgz .)
