"""`m1jax rl --config=experiments/rl.py:tiny --workdir=DIR [--config.loss.name=grpo ...]`.

Runs the warm start (when configured and no init_from is given), then RL; rerunning the same command
resumes. Prints one JSON line at the end: warm_start_accuracy, final_accuracy, plot, ...
Exit status: 0 when done; 2 for a bad config or workdir (one line, before any work); 1 for a diverged run;
128 + signal number when stopped by SIGTERM / SIGINT (after saving a checkpoint; rerun the same command to resume).
"""

from __future__ import annotations

from m1jax.cli.train import run_training
from m1jax.rl.config import validate
from m1jax.rl.loop import rl


def main(cfg, workdir: str | None) -> dict:
    return run_training("rl", validate, rl, cfg, workdir)
