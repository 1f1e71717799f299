"""Tiny CPU experiments. Usage: m1jax generate --config=experiments/tiny.py:smoke [--config.KEY=VALUE]."""

import dataclasses

import ml_collections

from m1jax.config import ModelConfig


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
    presets = {
        # 8 layers in M1's 7:1 lightning/softmax pattern, 4 experts top-2.
        "smoke": dict(num_hidden_layers=8, attn_type_list=(0,) * 7 + (1,), rotary_dim=8),
    }
    if arg not in presets:
        raise ValueError(f"unknown preset {arg!r} for experiments/tiny.py; choose from {sorted(presets)}")
    model = dataclasses.asdict(ModelConfig.tiny(**presets[arg]))
    cfg = ml_collections.ConfigDict()
    cfg.model = ml_collections.ConfigDict(model)  # tuples stay tuples: overridable from the command line
    cfg.checkpoint = ""  # a Hugging Face checkpoint directory to load instead of random init
    cfg.seed = 0
    cfg.batch_size = 4
    cfg.prompt_len = 24
    cfg.max_new_tokens = 32
    cfg.temperature = 0.0
    cfg.max_logprob_diff = 1e-4  # fp32 cache-vs-forward tolerance
    return cfg
