"""`m1jax train --config=experiments/pretrain.py:tiny --workdir=DIR [--config.optim.lr=3e-4 ...]`.

Exit status: 0 when done; 2 for a bad config or workdir (one line, before any work); 1 for a diverged run;
128 + signal number when stopped by SIGTERM / SIGINT (after saving a checkpoint; rerun the same command to resume).
"""

from __future__ import annotations

import json
import signal
import sys

from absl import flags, logging

from m1jax.train import NonFiniteError, train, validate


def run_training(command: str, validate, run, cfg, workdir: str | None, *, needs_workdir: bool = True) -> dict:
    """The body shared by `m1jax train` and `m1jax rl`: quiet orbax, check the config before any work (a
    ValueError becomes m1jax.cli.main's one-line error), run, print the summary as one JSON line, and exit
    1 on divergence or 128 + signal number when stopped by a signal."""
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        validate(cfg)  # every value checked before any work
        if not workdir and needs_workdir:
            raise ValueError("--workdir is required (it holds checkpoints, metrics and the config)")
    except ValueError as e:  # m1jax.cli.main prints it as one line, exit status 2
        raise ValueError(f"invalid config: {e}") from None
    try:
        summary = run(cfg, workdir)
    except NonFiniteError as e:
        sys.exit(f"m1jax {command}: training diverged: {e}")
    print(json.dumps(summary), flush=True)
    if summary.get("interrupted"):
        sys.exit(128 + int(signal.Signals[summary["interrupted"]]))
    return summary


def main(cfg, workdir: str | None) -> dict:
    return run_training("train", validate, train, cfg, workdir, needs_workdir=not cfg.dry_run)
