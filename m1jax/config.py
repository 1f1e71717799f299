"""ModelConfig: every field of a MiniMax-M1 checkpoint config that changes what the model computes.

Field names follow the released checkpoint's config.json (the remote-code form). ``from_hf`` also
reads the native transformers form (``layer_types``, ``*_alpha_factor``, ``rope_parameters``,
``block_size``); ``to_hf`` writes both, so the result loads in either code base.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax.numpy as jnp

LINEAR, FULL = 0, 1  # attn_type_list codes: lightning (linear) and softmax (full) attention
_NATIVE_TYPE = {LINEAR: "linear_attention", FULL: "full_attention"}
_TYPE_CODE = {"linear_attention": LINEAR, "full_attention": FULL, 0: LINEAR, 1: FULL}
DTYPES = ("float32", "bfloat16", "float16")
DECAY_RULES = ("remote", "native")
LM_HEAD_PRECISIONS = ("highest", "bf16x3", "bf16x6", "tf32")  # see m1jax/model/head.py


def hybrid_layout(num_layers: int, period: int = 8) -> tuple[int, ...]:
    """M1's layer pattern: softmax attention where (i + 1) % period == 0, lightning elsewhere."""
    return tuple(FULL if (i + 1) % period == 0 else LINEAR for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 200064
    hidden_size: int = 6144
    intermediate_size: int = 9216  # per expert
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 128
    attn_type_list: tuple[int, ...] = hybrid_layout(80)
    rope_theta: float = 1e7
    rotary_dim: int = 64
    max_position_embeddings: int = 10240000
    num_local_experts: int = 32
    num_experts_per_tok: int = 2
    shared_intermediate_size: int = 0
    router_aux_loss_coef: float = 0.001
    router_jitter_noise: float = 0.0
    rms_norm_eps: float = 1e-5
    postnorm: bool = True
    layernorm_full_attention_alpha: float = (2 * 80) ** 0.25
    layernorm_full_attention_beta: float = 1.0
    layernorm_linear_attention_alpha: float = (2 * 80) ** 0.25
    layernorm_linear_attention_beta: float = 1.0
    layernorm_mlp_alpha: float = (2 * 80) ** 0.25
    layernorm_mlp_beta: float = 1.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Not in the remote config.json: hard-coded there, configurable here.
    block_size: int = 256  # lightning attention chunk length
    lightning_norm_eps: float = 1e-6  # the lightning layer's RMSNorm uses its class default
    decay_rule: str = "remote"  # "native": transformers' l / (L - 1 + 1e-5) layer factor
    # Numerics of this implementation (not part of the checkpoint).
    dtype: str = "float32"  # activations / matmul inputs
    param_dtype: str = "float32"
    # LM-head matmul (the final norm is always fp32): "float32" is M1's fp32 head at full precision
    # (train and inference probabilities stay aligned, which RL needs); "bfloat16" multiplies in bf16
    # with fp32 accumulation (pretraining throughput: full-precision fp32 runs at ~1/6 of bf16 on a GPU).
    lm_head_dtype: str = "float32"
    # Products of the fp32 head (m1jax/model/head.py): "highest" IEEE fp32; "bf16x3" / "bf16x6" split-precision
    # bf16 products (~1e-5 / ~3e-6 relative logit error at a fraction of fp32's cost on GPUs / TPUs); "tf32".
    lm_head_precision: str = "highest"

    def __post_init__(self):
        object.__setattr__(self, "attn_type_list", tuple(int(t) for t in self.attn_type_list))
        self.validate()

    # ----------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        def need(ok: bool, field: str, msg: str):
            if not ok:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}: {msg}")

        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim", "num_local_experts",
                  "num_experts_per_tok", "block_size", "max_position_embeddings"):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f, "must be a positive int")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"must divide num_attention_heads={self.num_attention_heads}")
        need(self.rotary_dim % 2 == 0 and 0 < self.rotary_dim <= self.head_dim, "rotary_dim",
             f"must be even and in (0, head_dim={self.head_dim}]")
        need(self.num_experts_per_tok <= self.num_local_experts, "num_experts_per_tok",
             f"cannot exceed num_local_experts={self.num_local_experts}")
        need(len(self.attn_type_list) == self.num_hidden_layers, "attn_type_list",
             f"needs one entry per layer ({self.num_hidden_layers})")
        need(all(t in (LINEAR, FULL) for t in self.attn_type_list), "attn_type_list",
             "entries must be 0 (lightning) or 1 (softmax)")
        need(self.shared_intermediate_size == 0, "shared_intermediate_size",
             "shared experts are not part of MiniMax-M1 and are not supported")
        need(self.hidden_act == "silu", "hidden_act", "only 'silu' is supported")
        need(self.rope_theta > 0, "rope_theta", "must be positive")
        for f in ("rms_norm_eps", "lightning_norm_eps"):
            need(0 < getattr(self, f) < 1, f, "must be in (0, 1)")
        for f in ("layernorm_full_attention_alpha", "layernorm_full_attention_beta",
                  "layernorm_linear_attention_alpha", "layernorm_linear_attention_beta",
                  "layernorm_mlp_alpha", "layernorm_mlp_beta", "router_aux_loss_coef"):
            need(math.isfinite(getattr(self, f)), f, "must be finite")
        need(0.0 <= self.router_jitter_noise < 1.0, "router_jitter_noise", "must be in [0, 1)")
        need(self.postnorm, "postnorm", "only the postnorm=True variant (MiniMax-M1) is implemented")
        need(self.decay_rule in DECAY_RULES, "decay_rule", f"must be one of {DECAY_RULES}")
        need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}")
        need(self.param_dtype in DTYPES, "param_dtype", f"must be one of {DTYPES}")
        need(self.lm_head_dtype in DTYPES, "lm_head_dtype", f"must be one of {DTYPES}")
        need(self.lm_head_precision in LM_HEAD_PRECISIONS, "lm_head_precision", f"must be one of {LM_HEAD_PRECISIONS}")
        need(not self.tie_word_embeddings, "tie_word_embeddings", "MiniMax-M1 unties the LM head")

    # ------------------------------------------------------------------------------------ derived
    @property
    def layer_types(self) -> tuple[str, ...]:
        return tuple(_NATIVE_TYPE[t] for t in self.attn_type_list)

    def is_lightning(self, layer: int) -> bool:
        return self.attn_type_list[layer] == LINEAR

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready (tuples as lists). ``from_dict`` inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """From ``to_dict`` output or an ml_collections ``config.model`` dict (lists or tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # ------------------------------------------------------------------------------------ presets
    @classmethod
    def minimax_m1_456b(cls, **overrides) -> ModelConfig:
        """The released MiniMax-M1 / Text-01 shape: 80 layers, 456B params, 45.9B active."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> ModelConfig:
        """A few-thousand-parameter model for tests: 4 layers (L F L F), 4 heads of 16, 4 experts."""
        base = dict(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            attn_type_list=(LINEAR, FULL, LINEAR, FULL), rotary_dim=8, max_position_embeddings=512,
            num_local_experts=4, num_experts_per_tok=2, block_size=8,
            layernorm_full_attention_alpha=(2 * 4) ** 0.25, layernorm_linear_attention_alpha=(2 * 4) ** 0.25,
            layernorm_mlp_alpha=(2 * 4) ** 0.25,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        presets = {"minimax_m1_456b": cls.minimax_m1_456b, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown ModelConfig preset {name!r}; choose from {sorted(presets)}")
        return presets[name](**overrides)

    # ------------------------------------------------------------------------------ Hugging Face
    @classmethod
    def from_hf(cls, config: dict[str, Any] | str | os.PathLike, **overrides) -> ModelConfig:
        """Read a checkpoint config: a dict, a config.json path, or a checkpoint directory.

        Both forms are accepted: remote code (attn_type_list, layernorm_*_alpha, rotary_dim, rope_theta)
        and native transformers (layer_types, *_alpha_factor, rope_parameters, block_size). Where a
        config carries both, the remote-code fields win (they are what the released checkpoints use).
        """
        d = _read_config(config)
        kw: dict[str, Any] = {}
        if "attn_type_list" in d:
            kw["attn_type_list"] = tuple(_layer_code(t) for t in d["attn_type_list"])
        elif "layer_types" in d:
            kw["attn_type_list"] = tuple(_layer_code(t) for t in d["layer_types"])
            kw["decay_rule"] = "native"  # the code that reads this form computes the native decay
        else:
            raise ValueError("config has neither attn_type_list (remote form) nor layer_types (native form)")
        if "decay_rule" in d:
            kw["decay_rule"] = d["decay_rule"]
        for name, native in (("full_attention", "full_attn"), ("linear_attention", "linear_attn"), ("mlp", "mlp")):
            for ab in ("alpha", "beta"):
                remote_key, native_key = f"layernorm_{name}_{ab}", f"{native}_{ab}_factor"
                if remote_key in d:
                    kw[remote_key] = float(d[remote_key])
                elif native_key in d:
                    kw[remote_key] = float(d[native_key])
        rope = d.get("rope_parameters") or {}
        if rope and rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters.rope_type={rope['rope_type']!r}: only 'default' RoPE is supported")
        if "rope_theta" in d:
            kw["rope_theta"] = float(d["rope_theta"])
        elif "rope_theta" in rope:
            kw["rope_theta"] = float(rope["rope_theta"])
        head_dim = d.get("head_dim")
        if not head_dim:  # transformers' default: hidden_size / heads, which must divide exactly
            if d["hidden_size"] % d["num_attention_heads"]:
                raise ValueError(f"config.json has no head_dim and num_attention_heads={d['num_attention_heads']} "
                                 f"does not divide hidden_size={d['hidden_size']}: add head_dim to the config")
            head_dim = d["hidden_size"] // d["num_attention_heads"]
        # Native transformers rotates the whole head; remote code only rotary_dim of it.
        kw["rotary_dim"] = int(d.get("rotary_dim") or head_dim)
        kw["head_dim"] = int(head_dim)
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "num_local_experts", "num_experts_per_tok",
                  "block_size"):
            if d.get(f) is not None:
                kw[f] = int(d[f])
        for f in ("router_aux_loss_coef", "router_jitter_noise", "rms_norm_eps"):
            if d.get(f) is not None:
                kw[f] = float(d[f])
        for f in ("postnorm", "tie_word_embeddings", "hidden_act", "bos_token_id", "eos_token_id",
                  "shared_intermediate_size"):
            if f in d:
                kw[f] = d[f]
        if isinstance(kw.get("eos_token_id"), list):
            kw["eos_token_id"] = kw["eos_token_id"][0] if kw["eos_token_id"] else None
        if d.get("torch_dtype") in DTYPES or d.get("dtype") in DTYPES:
            kw.setdefault("param_dtype", d.get("torch_dtype") or d.get("dtype"))
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """config.json contents in the remote-code form plus the fields native transformers reads."""
        return {
            "architectures": ["MiniMaxM1ForCausalLM"],
            "model_type": "minimax",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "num_local_experts": self.num_local_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "shared_intermediate_size": self.shared_intermediate_size,
            "router_aux_loss_coef": self.router_aux_loss_coef,
            "router_jitter_noise": self.router_jitter_noise,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": self.param_dtype,
            # remote-code form
            "attn_type_list": list(self.attn_type_list),
            "rope_theta": self.rope_theta,
            "rotary_dim": self.rotary_dim,
            "postnorm": self.postnorm,
            **{f"layernorm_{n}_{ab}": getattr(self, f"layernorm_{n}_{ab}")
               for n in ("full_attention", "linear_attention", "mlp") for ab in ("alpha", "beta")},
            # native transformers form
            "layer_types": list(self.layer_types),
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "block_size": self.block_size,
            "full_attn_alpha_factor": self.layernorm_full_attention_alpha,
            "full_attn_beta_factor": self.layernorm_full_attention_beta,
            "linear_attn_alpha_factor": self.layernorm_linear_attention_alpha,
            "linear_attn_beta_factor": self.layernorm_linear_attention_beta,
            "mlp_alpha_factor": self.layernorm_mlp_alpha,
            "mlp_beta_factor": self.layernorm_mlp_beta,
            "decay_rule": self.decay_rule,
        }


def _layer_code(t) -> int:
    if t not in _TYPE_CODE:
        raise ValueError(f"unknown layer type {t!r} in attn_type_list/layer_types; "
                         "expected 0/'linear_attention' or 1/'full_attention'")
    return _TYPE_CODE[t]


def _read_config(config) -> dict[str, Any]:
    if isinstance(config, dict):
        return dict(config)
    path = os.fspath(config)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
