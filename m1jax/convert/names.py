"""THE name map between m1jax parameters and Hugging Face / PyTorch MiniMax state-dict keys.

One declarative table; each row says which m1jax parameter (a path in the NNX state) comes from
which checkpoint key(s) and how: ``transpose`` for torch Linear weights ([out, in] -> [in, out]),
``per_expert`` for experts stored one tensor per expert and stacked on axis 0 here.

Two key sets, one table. The CHECKPOINT names (``hf``) are the on-disk safetensors names of the released
MiniMax-M1 checkpoints, which remote code, vLLM / SGLang and transformers' from_pretrained read (and
save_pretrained writes). The NATIVE names (``native``, where they differ) are those of the modules of
transformers' in-library ``MiniMaxForCausalLM``, what its ``state_dict()`` / ``load_state_dict`` use:
``block_sparse_moe`` is ``mlp``, and the experts are fused, one tensor per layer with the per-expert
torch tensors stacked on axis 0: ``mlp.experts.gate_up_proj`` [E, 2I, hidden] is w1 then w3 (``part``
(0, 2) and (1, 2) on axis 1), ``mlp.experts.down_proj`` [E, hidden, I] is w2. Native lightning layers also
hold four derived buffers (BUFFERS), which a strict load needs.
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
    native: str = ""  # transformers' native module key where it differs from ``hf``; {i} = layer
    part: tuple[int, int] = (0, 1)  # (index, count): this tensor's block on axis 1 of the fused ``native``


GLOBAL_RULES = (
    Rule("embed_tokens", "model.embed_tokens.weight"),
    Rule("norm.weight", "model.norm.weight"),
    Rule("lm_head", "lm_head.weight", transpose=True),
)
LAYER_RULES = (
    Rule("layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight"),
    Rule("layers.{i}.post_attention_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    Rule("layers.{i}.block_sparse_moe.gate", "model.layers.{i}.block_sparse_moe.gate.weight", transpose=True,
         native="model.layers.{i}.mlp.gate.weight"),
    Rule("layers.{i}.block_sparse_moe.w1", "model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight", True, True,
         native="model.layers.{i}.mlp.experts.gate_up_proj", part=(0, 2)),
    Rule("layers.{i}.block_sparse_moe.w3", "model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight", True, True,
         native="model.layers.{i}.mlp.experts.gate_up_proj", part=(1, 2)),
    Rule("layers.{i}.block_sparse_moe.w2", "model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight", True, True,
         native="model.layers.{i}.mlp.experts.down_proj"),
)
LIGHTNING_RULES = tuple(
    Rule(f"layers.{{i}}.self_attn.{n}", f"model.layers.{{i}}.self_attn.{n}.weight", transpose=True)
    for n in ("qkv_proj", "output_gate", "out_proj")
) + (Rule("layers.{i}.self_attn.norm.weight", "model.layers.{i}.self_attn.norm.weight"),)
SOFTMAX_RULES = tuple(
    Rule(f"layers.{{i}}.self_attn.{n}", f"model.layers.{{i}}.self_attn.{n}.weight", transpose=True)
    for n in ("q_proj", "k_proj", "v_proj", "o_proj")
)
# Buffers native transformers keeps (and saves) per lightning layer; derived from the config, so ignored on read.
BUFFERS = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")
BUFFER_KEY = "model.layers.{i}.self_attn.{name}"
IGNORED_SUFFIXES = (*(f".{b}" for b in BUFFERS), "rotary_emb.inv_freq")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One m1jax parameter and the checkpoint keys it is made of (one, or one per expert)."""

    ours: str
    hf_keys: tuple[str, ...]
    transpose: bool
    per_expert: bool
    native_key: str  # the native name of the tensor holding this parameter (see the module docstring)
    part: tuple[int, int]


def entries(config: ModelConfig) -> Iterator[Entry]:
    """Every parameter of a model with this config, in checkpoint order."""
    def make(rule, i=None):
        ours = rule.ours.format(i=i)
        if rule.per_expert:
            keys = tuple(rule.hf.format(i=i, e=e) for e in range(config.num_local_experts))
        else:
            keys = (rule.hf.format(i=i),)
        native = rule.native.format(i=i) if rule.native else keys[0]
        return Entry(ours, keys, rule.transpose, rule.per_expert, native, rule.part)

    yield make(GLOBAL_RULES[0])
    for i in range(config.num_hidden_layers):
        attn = LIGHTNING_RULES if config.is_lightning(i) else SOFTMAX_RULES
        for rule in (*LAYER_RULES[:2], *attn, *LAYER_RULES[2:]):
            yield make(rule, i)
    yield from (make(r) for r in GLOBAL_RULES[1:])


def is_ignored(key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES)


def native_groups(config: ModelConfig) -> dict[str, list[Entry]]:
    """Each native key -> the entries it is made of, in ``part`` order (two for gate_up_proj, else one)."""
    groups: dict[str, list[Entry]] = {}
    for entry in entries(config):
        groups.setdefault(entry.native_key, []).append(entry)
    return {key: sorted(group, key=lambda e: e.part) for key, group in groups.items()}

