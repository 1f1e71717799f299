"""`m1jax rl --config=experiments/rl.py:tiny --workdir=DIR [--config.loss.name=grpo ...]`.

Runs the warm start (when configured and no init_from is given), then RL; rerunning the same command
resumes. Prints one JSON line at the end: warm_start_accuracy, final_accuracy, plot, ...
Exit status: 0 when done; 2 for a bad config or workdir (one line, before any work); 1 for a diverged run;
128 + signal number when stopped by SIGTERM / SIGINT (after saving a checkpoint; rerun the same command to resume).
"""

from __future__ import annotations

import json
import signal
import sys

from absl import flags, logging

from m1jax.rl.config import validate
from m1jax.rl.loop import rl
from m1jax.train import NonFiniteError


def main(cfg, workdir: str | None) -> dict:
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        validate(cfg)
        if not workdir:
            raise ValueError("--workdir is required (it holds checkpoints, metrics and the config)")
    except ValueError as e:  # m1jax.cli.main prints it as one line, exit status 2
        raise ValueError(f"invalid config: {e}") from None
    try:
        summary = rl(cfg, workdir)
    except NonFiniteError as e:
        sys.exit(f"m1jax rl: training diverged: {e}")
    print(json.dumps(summary), flush=True)
    if summary.get("interrupted"):
        sys.exit(128 + int(signal.Signals[summary["interrupted"]]))
    return summary
