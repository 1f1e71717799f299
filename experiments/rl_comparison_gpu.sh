#!/usr/bin/env bash
# One task's RL comparison (experiments/rl_comparison.py) on a GPU machine reached through the device tool:
# the runs are spread over every GPU, several per GPU; when the time limit hits, the runs checkpoint and stop, and
# whatever finished is packed into $OUT (rerun with the packed runs carried back to resume).
#
#   bash experiments/rl_comparison_gpu.sh TASK [SEEDS] [LIMIT_S] [PER_GPU] [-- extra rl_comparison.py flags]
#
# Carry .whl (ml-collections for Python 3.12) and, to share a warm start made elsewhere,
# experiments/results/rl_comparison/warm_start; carry experiments/results/rl_comparison/runs to resume.
set -u -o pipefail
TASK=${1:?task}; SEEDS=${2:-0-9}; LIMIT=${3:-540}; PER_GPU=${4:-12}
shift $(( $# < 4 ? $# : 4 )); [ "${1:-}" = "--" ] && shift
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:.
fi
GPUS=$(nvidia-smi -L | wc -l)
R=experiments/results/rl_comparison
nvidia-smi -L > "$OUT/nvidia_smi_$TASK.txt"
echo "$(date -Is) $TASK: $GPUS GPU(s), $((GPUS * PER_GPU)) runs at once, limit ${LIMIT}s, seeds $SEEDS, extra: $*"
timeout -s TERM -k 60 "$LIMIT" python3 experiments/rl_comparison.py --task "$TASK" --seeds "$SEEDS" --sweep \
  --gpus "$GPUS" --parallel $((GPUS * PER_GPU)) --n-boot 200 "$@" 2>&1 | tee "$OUT/study_$TASK.log"
echo "study exit: $?"
# What the report needs (metrics, configs, run info; no checkpoints), and the warm start apart (it has one).
tar czf "$OUT/runs_$TASK.tgz" --exclude=checkpoints --exclude=.jax_cache "$R/runs/$TASK" "$R/$TASK" 2>/dev/null
tar czf "$OUT/warm_start_$TASK.tgz" "$R/warm_start/$TASK" 2>/dev/null
ls -la "$OUT"
