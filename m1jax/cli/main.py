"""`m1jax <command> --config=experiments/<file>.py:<preset> [--config.x=y ...]`: thin absl entry points.

A relative ``--config`` path is looked up in the working directory first, then in the m1jax checkout
(``REPO_ROOT``, the directory holding the installed ``m1jax`` package and ``experiments/``), so
``--config=experiments/pretrain.py:tiny`` works from any directory.
"""

from __future__ import annotations

import os
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


# Errors a command raises for bad input (a setting, a path, a file): reported in one line, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _help() -> str:
    lines = ["m1jax: MiniMax-M1 in JAX (train, RL, generate, convert).", "", _usage(), "", "commands:"]
    for name, (what, example) in ABOUT.items():
        lines += [f"  {name:<9} {what}", f"  {'':<9} e.g. {example}"]
    lines += ["", "Override any config key with --config.KEY=VALUE; presets live in experiments/*.py."]
    return "\n".join(lines)


# Each config-driven command's presets file (its default preset's keys are listed by --help).
PRESET_FILES = {"train": "experiments/pretrain.py", "rl": "experiments/rl.py", "generate": "experiments/tiny.py"}

# The checkout m1jax is installed from (`pip install -e .`): it holds experiments/ (with a regular install,
# site-packages, where setup.cfg puts the `experiments` package beside `m1jax`).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_path_candidates(path: str) -> list[str]:
    """Where a ``--config`` file path is looked for, in order: as given (relative to the working directory),
    then, for a relative path, under REPO_ROOT."""
    path = os.path.expanduser(path)
    places = [os.path.abspath(path)]
    if not os.path.isabs(path) and os.path.abspath(os.path.join(REPO_ROOT, path)) not in places:
        places.append(os.path.abspath(os.path.join(REPO_ROOT, path)))
    return places


def resolve_config_path(path: str) -> str:
    """The absolute path of a ``--config`` file (see ``config_path_candidates``); FileNotFoundError naming
    every place looked at when there is none."""
    places = config_path_candidates(path)
    for place in places:
        if os.path.isfile(place):
            return place
    raise FileNotFoundError(f"--config={path}: no such config file (looked for {' and '.join(places)})")


def _resolve_config_arg(args: list[str]) -> list[str]:
    """``args`` with the ``--config`` file (``--config=PATH[:PRESET]`` or ``--config PATH[:PRESET]``) made
    absolute, so that absl finds it from any working directory."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            path, sep, preset = arg[len("--config="):].partition(":")
            out[i] = f"--config={resolve_config_path(path)}{sep}{preset}"
        elif arg == "--config" and i + 1 < len(out):
            path, sep, preset = out[i + 1].partition(":")
            out[i + 1] = f"{resolve_config_path(path)}{sep}{preset}"
    return out


def _command_help(command: str) -> str:
    """What a command does (its module docstring), its presets and its config sections with their keys."""
    import importlib

    module = importlib.import_module(COMMANDS[command])
    lines = [(module.__doc__ or ABOUT[command][0]).strip(), "", f"example: {ABOUT[command][1]}"]
    path = PRESET_FILES.get(command)
    if path and os.path.exists(os.path.join(REPO_ROOT, path)):
        presets = _presets(os.path.join(REPO_ROOT, path))
        lines += ["", f"presets ({path}, --config={path}:PRESET): {', '.join(presets)}"]
        cfg = _load_config(os.path.join(REPO_ROOT, path), "")
        if cfg is not None:
            lines += ["", "config keys (--config.KEY=VALUE; defaults of the first preset):"]
            for key, value in cfg.items():
                if hasattr(value, "keys"):
                    lines.append(f"  {key}.{{{', '.join(value.keys())}}}")
                else:
                    lines.append(f"  {key} = {value!r}")
    return "\n".join(lines)


def _presets(path: str) -> list[str]:
    """A config file's presets, as its get_config names them when asked for one it does not have."""
    import re

    try:
        _load_config(path, "\0", raise_errors=True)
    except ValueError as e:
        return re.findall(r"'([^']+)'", str(e).partition("choose from")[2])
    except Exception:  # noqa: BLE001
        pass
    return []


def _load_config(path: str, preset: str, *, raise_errors: bool = False):
    """get_config(preset) of a config file, or None if it cannot be loaded."""
    import importlib.util

    try:
        loader = importlib.util.spec_from_file_location("_m1jax_config_file", path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        return module.get_config(preset) if preset else module.get_config()
    except Exception:  # noqa: BLE001 - a broken config file gets absl's full report later
        if raise_errors:
            raise
        return None


def run():
    """Console entry point: dispatch on the first argument, then let absl parse the flags."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(_help())
        sys.exit(0)
    asks_help = any(a in ("-h", "--help", "--helpshort") for a in sys.argv[2:])
    if len(sys.argv) > 2 and sys.argv[1] in COMMANDS and asks_help:
        print(_command_help(sys.argv[1]))
        sys.exit(0)
    if sys.argv[1] not in COMMANDS:
        got = sys.argv[1] if len(sys.argv) > 1 else "nothing"
        sys.exit(f"m1jax: unknown command {got!r}\n{_usage()}")
    command = sys.argv.pop(1)
    try:
        sys.argv[1:] = _resolve_config_arg(sys.argv[1:])
    except FileNotFoundError as e:  # one line, exit status 2, like every other user error
        print(f"m1jax {command}: {e}", file=sys.stderr)
        sys.exit(2)
    module = __import__(COMMANDS[command], fromlist=["main"])

    def main(argv):
        _quiet_logs()
        try:
            return run_command(argv)
        except USER_ERRORS as e:  # what the user can fix: one line, exit 2 (M1JAX_DEBUG=1 shows the traceback)
            if os.environ.get("M1JAX_DEBUG"):
                raise
            print(f"m1jax {command}: {e}", file=sys.stderr)
            sys.exit(2)

    def run_command(argv):
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

    args = sys.argv[1:]
    has_config = any(a in ("--config", "-config") or a.startswith(("--config=", "-config=")) for a in args)
    dotted = next((a.split("=")[0] for a in args if a.startswith("--config.")), None)
    if dotted and not has_config and not getattr(module, "POSITIONAL", False):  # absl: "Unknown command line flag"
        print(f"m1jax {command}: {dotted} needs a --config=FILE[:PRESET] to override (see m1jax {command} --help)",
              file=sys.stderr)
        sys.exit(2)
    bad = _unknown_config_key(command, sys.argv[1:])
    if bad:  # a user error: one line, exit status 2 (absl would print a 56-line chained traceback)
        print(bad, file=sys.stderr)
        sys.exit(2)
    app.run(main)


def _quiet_logs() -> None:
    """Show warnings and errors only. absl logs at INFO by default, which prints jax probing for backends
    it does not have ("Unable to initialize backend 'tpu'") and orbax's lines for every save and restore;
    ``--verbosity`` / ``-v`` or M1JAX_DEBUG=1 keep absl's level."""
    from absl import logging

    if not (os.environ.get("M1JAX_DEBUG") or flags.FLAGS["verbosity"].present):
        logging.set_verbosity(logging.WARNING)


def _unknown_config_key(command: str, args: list[str]) -> str | None:
    """A one-line error for the first ``--config.a.b=...`` override that names no key of the config file
    (with the closest keys), or None. Config files that fail to load are left to absl's own message."""
    import difflib

    spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, preset = spec.partition(":")
    cfg = _load_config(path, preset)  # already resolved by _resolve_config_arg
    if cfg is None:
        return None
    for arg in args:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        node, walked = cfg, []
        for part in key.split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                near = difflib.get_close_matches(part, keys, n=3, cutoff=0.5)
                where = "config" + "".join(f".{w}" for w in walked)
                hint = f"; did you mean {', '.join(where + '.' + n for n in near)}?" if near else \
                    f"; {where} has {', '.join(sorted(keys)) or 'no keys'}"
                return f"m1jax {command}: --config.{key}: {where} has no key {part!r}{hint}"
            node, walked = node[part], walked + [part]
    return None


if __name__ == "__main__":
    run()
