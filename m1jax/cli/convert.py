"""`m1jax convert DIRECTION SRC DST [--dtype=bfloat16] [--shard-size=5GB] [--overwrite]`.

Directions:
  hf-to-orbax   Hugging Face checkpoint dir -> params-only orbax checkpoint (what `train` restores
                with --config.init_from=DST, and `generate` can load)
  orbax-to-hf   orbax params / training checkpoint (or a training workdir: its latest step) -> HF dir
  hf-to-hf      re-write an HF checkpoint (cast, re-shard) streaming tensor by tensor
  hf-to-torch   HF checkpoint dir -> a plain torch state_dict file (.pt)
The orbax directions hold the parameters on the JAX devices while converting (host memory on a CPU);
hf-to-hf streams and needs about one tensor of memory.
"""

from __future__ import annotations

import os

from absl import flags

POSITIONAL = True  # m1jax.cli.main: this command takes positional arguments, not --config
DIRECTIONS = ("hf-to-orbax", "orbax-to-hf", "hf-to-hf", "hf-to-torch")
USAGE = f"usage: m1jax convert {{{','.join(DIRECTIONS)}}} SRC DST [--dtype=DT] [--shard-size=5GB] [--overwrite]"

flags.DEFINE_string("dtype", None, "Parameter dtype to write (float32, bfloat16, float16); default: keep.")
flags.DEFINE_string("shard-size", "5GB", "Maximum safetensors shard size (bytes or e.g. 500MB, 5GB).")
flags.DEFINE_bool("overwrite", False, "Replace an existing destination (only after the new one is complete).")


def convert(direction: str, src: str, dst: str, *, dtype: str | None = None, shard_size: str = "5GB",
            overwrite: bool = False) -> str:
    """The library function behind the command; returns the written path."""
    from m1jax.config import DTYPES
    from m1jax.convert import hf
    from m1jax.convert.torch_io import save_torch

    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}\n{USAGE}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}: must be one of {DTYPES}")
    hf.parse_size(shard_size)  # fail on a bad size before any work
    if not os.path.exists(src):
        raise FileNotFoundError(f"source {src} does not exist")
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"destination {dst} exists; pass --overwrite to replace it")
    if direction == "hf-to-hf":
        return hf.convert_hf(src, dst, dtype=dtype, shard_size=shard_size, overwrite=overwrite)
    if direction == "hf-to-torch":
        return save_torch(hf.load_hf(src, dtype=dtype), dst)
    from m1jax.train import checkpoint as orbax_ckpt

    if direction == "hf-to-orbax":
        return orbax_ckpt.save_params(dst, hf.load_hf(src, dtype=dtype), force=overwrite)
    model = orbax_ckpt.restore_params(orbax_ckpt.resolve_checkpoint(src))
    return hf.save_hf(model, dst, dtype=dtype, shard_size=shard_size, overwrite=overwrite)


def main_argv(args: list[str]) -> None:
    if len(args) != 3:
        raise SystemExit(f"m1jax convert: expected DIRECTION SRC DST, got {args}\n{USAGE}")
    F = flags.FLAGS
    path = convert(*args, dtype=F.dtype, shard_size=F["shard-size"].value, overwrite=F.overwrite)
    print(f"wrote {path}")
