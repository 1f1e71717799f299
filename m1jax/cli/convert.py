"""`m1jax convert DIRECTION SRC DST [--dtype=bfloat16] [--shard-size=5GB] [--overwrite] [...]`.

Directions:
  hf-to-orbax     Hugging Face checkpoint dir -> params-only orbax checkpoint (what `train` restores
                  with --config.init_from=DST, and `generate` can load)
  orbax-to-hf     orbax params / training checkpoint (or a training workdir: its latest step) -> HF dir
  hf-to-hf        re-write an HF checkpoint (cast, re-shard) streaming tensor by tensor
  hf-to-torch     HF checkpoint dir -> a plain torch state_dict file (.pt)
  orbax-to-torch  orbax checkpoint (or training workdir) -> .pt
  torch-to-hf     .pt state dict (either key set) + --model-config -> HF dir
  torch-to-orbax  .pt state dict (either key set) + --model-config -> params-only orbax checkpoint
A .pt is written in transformers' native MiniMaxForCausalLM names by default (a strict load_state_dict
works); --names=checkpoint writes the released checkpoints' on-disk names instead.
An HF directory gets config.json (with BOS / EOS ids), the safetensors, generation_config.json and a
tokenizer: --tokenizer=bytes|PATH|none, default auto: hf-to-hf copies the source's tokenizer files,
orbax-to-hf uses the training run's tokenizer (its workdir config.json), torch-to-hf the --model-config
directory's. --native-buffers adds the derived lightning buffers native transformers keeps, so its
from_pretrained reports no missing keys (off by default: the released checkpoints do not have them and
vLLM / SGLang loaders look every tensor up as a parameter).
The orbax directions hold the parameters on the JAX devices while converting (host memory on a CPU);
hf-to-hf streams and needs about one tensor of memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from absl import flags

POSITIONAL = True  # m1jax.cli.main: this command takes positional arguments, not --config
DIRECTIONS = ("hf-to-orbax", "orbax-to-hf", "hf-to-hf", "hf-to-torch", "orbax-to-torch", "torch-to-hf",
              "torch-to-orbax")
WRITES_HF = ("orbax-to-hf", "hf-to-hf", "torch-to-hf")
WRITES_TORCH = ("hf-to-torch", "orbax-to-torch")
READS_TORCH = ("torch-to-hf", "torch-to-orbax")
USAGE = (f"usage: m1jax convert {{{','.join(DIRECTIONS)}}} SRC DST [--dtype=DT] [--shard-size=5GB] [--overwrite] "
         "[--names=native|checkpoint] [--native-buffers] [--tokenizer=auto|bytes|PATH|none] [--model-config=PATH]")

flags.DEFINE_string("dtype", None, "Parameter dtype to write (float32, bfloat16, float16); default: keep.")
flags.DEFINE_string("shard-size", "5GB", "Maximum safetensors shard size (bytes or e.g. 500MB, 5GB).")
flags.DEFINE_bool("overwrite", False, "Replace an existing destination (only after the new one is complete).")
flags.DEFINE_enum("names", None, ["native", "checkpoint"],
                  ".pt key names: native (transformers' MiniMaxForCausalLM, default) or checkpoint (on-disk).")
flags.DEFINE_bool("native-buffers", False, "Also write the derived lightning buffers native transformers keeps.")
flags.DEFINE_string("tokenizer", "auto", "HF exports: auto, bytes, a tokenizer.json / directory, or none.")
flags.DEFINE_string("model-config", None, "torch-to-*: the model's config.json (or an HF directory holding one).")


def convert(direction: str, src: str, dst: str, *, dtype: str | None = None, shard_size: str = "5GB",
            overwrite: bool = False, names: str | None = None, native_buffers: bool = False,
            tokenizer: str = "auto", model_config: str | None = None,
            log: Callable[[str], None] | None = None) -> str:
    """The library function behind the command; returns the written path. Every argument is checked
    before anything is read or written; ``log`` receives a line saying which tokenizer an HF export got."""
    from m1jax.config import DTYPES
    from m1jax.convert import hf

    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}\n{USAGE}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}: must be one of {DTYPES}")
    _check_applies(direction, names=names, native_buffers=native_buffers, tokenizer=tokenizer,
                   model_config=model_config)
    hf.parse_size(shard_size)  # fail on a bad size before any work
    if not os.path.exists(src):
        raise FileNotFoundError(f"source {src} does not exist")
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"destination {dst} exists; pass --overwrite to replace it")
    if model_config is not None and not os.path.exists(model_config):
        raise FileNotFoundError(f"--model-config={model_config} does not exist")
    spec, bos, eos, why = _resolve_tokenizer(direction, src, tokenizer, model_config)
    path = _run(direction, src, dst, dtype=dtype, shard_size=shard_size, overwrite=overwrite, names=names,
                native_buffers=native_buffers, tokenizer=(spec, bos, eos), model_config=model_config)
    if direction in WRITES_HF and log:
        log(f"tokenizer: {src if spec == 'source' else spec or 'none'} ({why})")
    return path


def _run(direction, src, dst, *, dtype, shard_size, overwrite, names, native_buffers, tokenizer, model_config):
    from m1jax.config import ModelConfig
    from m1jax.convert import hf
    from m1jax.convert.torch_io import load_torch, save_torch

    spec, bos, eos = tokenizer
    to_hf = dict(dtype=dtype, shard_size=shard_size, overwrite=overwrite, native_buffers=native_buffers)
    if direction == "hf-to-hf":
        return hf.convert_hf(src, dst, tokenizer=spec, **to_hf)
    if direction in READS_TORCH:
        model = load_torch(src, ModelConfig.from_hf(model_config, **({"param_dtype": dtype} if dtype else {})))
    elif direction.startswith("hf-"):
        model = hf.load_hf(src, dtype=dtype)
    else:
        from m1jax.train import checkpoint as orbax_ckpt

        model = orbax_ckpt.restore_params(orbax_ckpt.resolve_checkpoint(src))
    if direction in WRITES_TORCH:
        return save_torch(model, dst, dtype=dtype, key_names=names or "native", native_buffers=native_buffers)
    if direction in WRITES_HF:
        return hf.save_hf(model, dst, tokenizer=spec, bos_token=bos, eos_token=eos, **to_hf)
    from m1jax.train import checkpoint as orbax_ckpt

    return orbax_ckpt.save_params(dst, model, force=overwrite)


def _check_applies(direction: str, **given) -> None:
    """A flag given to a direction it does nothing for is an error, not silently ignored."""
    applies = {"names": WRITES_TORCH, "native_buffers": WRITES_HF + WRITES_TORCH, "tokenizer": WRITES_HF,
               "model_config": READS_TORCH}
    defaults = {"names": None, "native_buffers": False, "tokenizer": "auto", "model_config": None}
    for name, value in given.items():
        if value != defaults[name] and direction not in applies[name]:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} does not apply to {direction} (only to {', '.join(applies[name])})")
    if direction in READS_TORCH and given["model_config"] is None:
        raise ValueError(f"{direction} needs --model-config=PATH: a .pt holds no config (a config.json or an HF "
                         "directory, e.g. the one it was exported from)")


def _resolve_tokenizer(direction: str, src: str, tokenizer: str, model_config: str | None):
    """(spec, bos_token, eos_token, why) of the tokenizer an HF export gets (spec None: none)."""
    from m1jax.convert.hf_files import has_tokenizer

    if direction not in WRITES_HF:
        return None, "", "", "not an HF export"
    if tokenizer != "auto":
        return (None if tokenizer == "none" else tokenizer), "", "", "--tokenizer"
    if direction == "hf-to-hf":
        return ("source", "", "", "the source's") if has_tokenizer(src) else (None, "", "", "the source has none")
    if direction == "torch-to-hf":
        if os.path.isdir(model_config) and has_tokenizer(model_config):
            return model_config, "", "", "the --model-config directory's"
        return None, "", "", "--model-config has none; pass --tokenizer=bytes|PATH"
    run = _run_config(src)
    if run is None:
        return None, "", "", "not a training run's checkpoint; pass --tokenizer=bytes|PATH"
    data = run.get("data") if isinstance(run.get("data"), dict) else {}
    if data.get("tokenizer"):
        return data["tokenizer"], data.get("bos_token", ""), data.get("eos_token", ""), "the run's data.tokenizer"
    if "rollout" in run:  # an `m1jax rl` run: its tasks use the byte tokenizer
        return "bytes", "", "", "an RL run"
    return None, "", "", "the run's config names none; pass --tokenizer=bytes|PATH"


def _run_config(src: str) -> dict | None:
    """The config.json of the training workdir a checkpoint belongs to (WORKDIR/checkpoints/STEP), or None."""
    from m1jax.train.checkpoint import resolve_checkpoint

    step = resolve_checkpoint(src)
    checkpoints = os.path.dirname(step)
    path = os.path.join(os.path.dirname(checkpoints), "config.json")
    if os.path.basename(checkpoints) != "checkpoints" or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def main_argv(args: list[str]) -> None:
    if len(args) != 3:
        raise SystemExit(f"m1jax convert: expected DIRECTION SRC DST, got {args}\n{USAGE}")
    F = flags.FLAGS
    path = convert(*args, dtype=F.dtype, shard_size=F["shard-size"].value, overwrite=F.overwrite, names=F.names,
                   native_buffers=F["native-buffers"].value, tokenizer=F.tokenizer,
                   model_config=F["model-config"].value, log=print)
    print(f"wrote {path}")
