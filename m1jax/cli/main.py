"""`m1jax <command> --config=experiments/<file>.py:<preset> [--config.x=y ...]`: thin absl entry points."""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs (config, logs, checkpoints).")
# Multi-host: one process per host; each flag falls back to M1JAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID.
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for jax.distributed (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) for jax.distributed.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")

COMMANDS = {"generate": "m1jax.cli.generate", "train": "m1jax.cli.train", "rl": "m1jax.cli.rl",
            "convert": "m1jax.cli.convert"}
ABOUT = {
    "train": ("supervised (pre)training with checkpoints, metrics and resume",
              "m1jax train --config=experiments/pretrain.py:tiny --workdir=/tmp/tiny"),
    "rl": ("RL (CISPO / GRPO / DAPO) with a verifier reward, after an optional supervised warm start",
           "m1jax rl --config=experiments/rl.py:tiny --workdir=/tmp/rl"),
    "generate": ("sample text from a run, an orbax or a Hugging Face checkpoint (or a random model)",
                 "m1jax generate --config=experiments/tiny.py --config.checkpoint=/tmp/rl --config.prompt='12+34='"),
    "convert": ("convert checkpoints between Hugging Face, orbax and PyTorch",
                "m1jax convert hf-to-orbax /ckpt/hf /ckpt/orbax"),
}


def _usage() -> str:
    return f"usage: m1jax {{{','.join(COMMANDS)}}} --config=experiments/FILE.py[:PRESET] [--config.KEY=VALUE ...]"


def _help() -> str:
    lines = ["m1jax: MiniMax-M1 in JAX (train, RL, generate, convert).", "", _usage(), "", "commands:"]
    for name, (what, example) in ABOUT.items():
        lines += [f"  {name:<9} {what}", f"  {'':<9} e.g. {example}"]
    lines += ["", "Override any config key with --config.KEY=VALUE; presets live in experiments/*.py."]
    return "\n".join(lines)


def run():
    """Console entry point: dispatch on the first argument, then let absl parse the flags."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(_help())
        sys.exit(0)
    if sys.argv[1] not in COMMANDS:
        got = sys.argv[1] if len(sys.argv) > 1 else "nothing"
        sys.exit(f"m1jax: unknown command {got!r}\n{_usage()}")
    command = sys.argv.pop(1)
    module = __import__(COMMANDS[command], fromlist=["main"])

    def main(argv):
        if getattr(module, "POSITIONAL", False):
            return module.main_argv(argv[1:])
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}\n{_usage()}")
        if _CONFIG.value is None:
            raise app.UsageError(f"--config is required\n{_usage()}")
        from m1jax.sharding import initialize_distributed

        F = flags.FLAGS
        initialize_distributed(F.coordinator_address, F.num_processes, F.process_id)  # before any other jax call
        module.main(_CONFIG.value, F.workdir)

    app.run(main)


if __name__ == "__main__":
    run()
