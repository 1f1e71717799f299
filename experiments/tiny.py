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
    cfg.checkpoint = ""  # a Hugging Face dir, an orbax checkpoint or a train / rl workdir (else random init)
    cfg.prompt = ""  # text prompt(s), separated by prompt_separator; empty: random token prompts + cache check
    cfg.prompt_separator = "|"
    cfg.tokenizer = "bytes"  # "bytes" or a tokenizer.json (text prompts only)
    cfg.seed = 0
    cfg.batch_size = 4
    cfg.prompt_len = 24
    cfg.max_new_tokens = 32
    cfg.temperature = 0.0
    cfg.top_k = 0
    cfg.top_p = 1.0
    cfg.num_samples = 1
    cfg.batch_slots = 0  # > 0: continuous batching, this many rows decoded at once (same samples; 0 = all at once)
    cfg.max_logprob_diff = 1e-4  # fp32 cache-vs-forward tolerance
    return cfg
