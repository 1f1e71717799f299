"""`m1jax train --config=experiments/pretrain.py:tiny --workdir=DIR [--config.optim.lr=3e-4 ...]`.

`--config.dry_run=True` prints the model's size, training FLOPs and training-state memory (no workdir, nothing
allocated), e.g. for the full shape: m1jax train --config=experiments/pretrain.py:m1_456b --config.dry_run=True

Exit status: 0 when done; 2 for a bad config or workdir (one line, before any work); 1 for a diverged run;
128 + signal number when stopped by SIGTERM / SIGINT (after saving a checkpoint; rerun the same command to resume).
"""

from __future__ import annotations

import json
import signal
import sys

from m1jax.train import NonFiniteError, train, validate


def run_training(command: str, validate, run, cfg, workdir: str | None, *, needs_workdir: bool = True) -> dict:
    """The body shared by `m1jax train` and `m1jax rl`: check the config before any work (a
    ValueError becomes m1jax.cli.main's one-line error), run, print the summary as one JSON line, and exit
    1 on divergence or 128 + signal number when stopped by a signal."""
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
    if cfg.dry_run:
        return dry_run(cfg)
    return run_training("train", validate, train, cfg, workdir)


def dry_run(cfg) -> dict:
    """Print what ``cfg`` would train (sizes, FLOPs, memory) once, readably; allocate nothing. Returns
    m1jax.train.loop.describe's numbers."""
    from m1jax.train.loop import describe

    try:
        model_config = validate(cfg)
    except ValueError as e:  # m1jax.cli.main prints it as one line, exit status 2
        raise ValueError(f"invalid config: {e}") from None
    info = describe(cfg, model_config)
    print(format_dry_run(info, model_config), flush=True)
    return {"dry_run": True, **info}


def _scaled(x: float, units: tuple[str, ...]) -> str:
    """x with a unit prefix per factor of 1000: 456089655296 -> '456.1B' for units ('', 'K', 'M', 'B', 'T')."""
    i = 0
    while abs(x) >= 999.95 and i < len(units) - 1:
        x, i = x / 1000, i + 1
    return f"{x:.1f}{units[i]}" if i else f"{x:g}{units[0]}"


def _binary(nbytes: float) -> str:
    """A byte count in MiB, GiB or TiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**20:.1f} MiB"


def format_dry_run(info: dict, model_config) -> str:
    """describe()'s numbers as a few readable lines."""
    c = model_config
    count = lambda n: _scaled(n, ("", "K", "M", "B", "T"))  # noqa: E731
    flop = lambda n: _scaled(n, (" FLOP", " KFLOP", " MFLOP", " GFLOP", " TFLOP", " PFLOP", " EFLOP"))  # noqa: E731
    lightning = sum(c.is_lightning(i) for i in range(c.num_hidden_layers))
    tokens = info["tokens_per_step"]
    return "\n".join([
        f"m1jax train: dry run (nothing allocated): {c.num_hidden_layers} layers ({lightning} lightning, "
        f"{c.num_hidden_layers - lightning} softmax), hidden {c.hidden_size}, {c.num_local_experts} experts "
        f"top-{c.num_experts_per_tok}",
        f"  parameters       {count(info['params_total'])} total, {count(info['params_active'])} active per token "
        f"({count(info['params_active_non_embedding'])} without the embedding and LM head)",
        f"  training FLOPs   {flop(info['train_flops_per_token'])} per token "
        f"({info['attention_flops_fraction']:.1%} attention); {flop(info['train_flops_per_token'] * tokens)} "
        f"per step of {count(tokens)} tokens",
        f"  training state   {_binary(info['state_memory_gib'] * 2**30)} (params, grads and Adam's two moments in "
        f"{c.param_dtype}; activations not counted)",
    ])
