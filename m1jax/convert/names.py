"""THE name map between m1jax parameters and Hugging Face / PyTorch MiniMax state-dict keys.

One declarative table; each row says which m1jax parameter (a path in the NNX state) comes from
which checkpoint key(s) and how: ``transpose`` for torch Linear weights ([out, in] -> [in, out]),
``per_expert`` for experts stored one tensor per expert and stacked on axis 0 here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from m1jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: str  # path in the NNX state; {i} = layer
    hf: str  # checkpoint key; {i} = layer, {e} = expert
    transpose: bool = False
    per_expert: bool = False


GLOBAL_RULES = (
    Rule("embed_tokens", "model.embed_tokens.weight"),
    Rule("norm.weight", "model.norm.weight"),
    Rule("lm_head", "lm_head.weight", transpose=True),
)
LAYER_RULES = (
    Rule("layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight"),
    Rule("layers.{i}.post_attention_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    Rule("layers.{i}.block_sparse_moe.gate", "model.layers.{i}.block_sparse_moe.gate.weight", transpose=True),
    Rule("layers.{i}.block_sparse_moe.w1", "model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight", True, True),
    Rule("layers.{i}.block_sparse_moe.w3", "model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight", True, True),
    Rule("layers.{i}.block_sparse_moe.w2", "model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight", True, True),
)
LIGHTNING_RULES = tuple(
    Rule(f"layers.{{i}}.self_attn.{n}", f"model.layers.{{i}}.self_attn.{n}.weight", transpose=True)
    for n in ("qkv_proj", "output_gate", "out_proj")
) + (Rule("layers.{i}.self_attn.norm.weight", "model.layers.{i}.self_attn.norm.weight"),)
SOFTMAX_RULES = tuple(
    Rule(f"layers.{{i}}.self_attn.{n}", f"model.layers.{{i}}.self_attn.{n}.weight", transpose=True)
    for n in ("q_proj", "k_proj", "v_proj", "o_proj")
)
# Buffers that native transformers saves for lightning layers; derived from the config, so ignored.
IGNORED_SUFFIXES = (".slope_rate", ".query_decay", ".key_decay", ".diagonal_decay", "rotary_emb.inv_freq")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One m1jax parameter and the checkpoint keys it is made of (one, or one per expert)."""

    ours: str
    hf_keys: tuple[str, ...]
    transpose: bool
    per_expert: bool


def entries(config: ModelConfig) -> Iterator[Entry]:
    """Every parameter of a model with this config, in checkpoint order."""
    def make(rule, i=None):
        ours = rule.ours.format(i=i)
        if rule.per_expert:
            keys = tuple(rule.hf.format(i=i, e=e) for e in range(config.num_local_experts))
        else:
            keys = (rule.hf.format(i=i),)
        return Entry(ours, keys, rule.transpose, rule.per_expert)

    yield make(GLOBAL_RULES[0])
    for i in range(config.num_hidden_layers):
        attn = LIGHTNING_RULES if config.is_lightning(i) else SOFTMAX_RULES
        for rule in (*LAYER_RULES[:2], *attn, *LAYER_RULES[2:]):
            yield make(rule, i)
    yield from (make(r) for r in GLOBAL_RULES[1:])


def is_ignored(key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES)
