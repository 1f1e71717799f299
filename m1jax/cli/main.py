"""`m1jax <command> --config=experiments/<file>.py:<preset> [--config.x=y ...]`: thin absl entry points."""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs (config, logs, checkpoints).")

COMMANDS = {"generate": "m1jax.cli.generate", "train": "m1jax.cli.train", "convert": "m1jax.cli.convert"}


def _usage() -> str:
    return f"usage: m1jax {{{','.join(COMMANDS)}}} --config=experiments/FILE.py[:PRESET] [--config.KEY=VALUE ...]"


def run():
    """Console entry point: dispatch on the first argument, then let absl parse the flags."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
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
        module.main(_CONFIG.value, flags.FLAGS.workdir)

    app.run(main)


if __name__ == "__main__":
    run()
