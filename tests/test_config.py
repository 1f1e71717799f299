import json

import pytest

from m1jax import ModelConfig
from m1jax.config import FULL, LINEAR, hybrid_layout


def test_full_model_preset_matches_the_spec():
    c = ModelConfig.minimax_m1_456b()
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size) == (6144, 80, 200064)
    assert (c.num_attention_heads, c.head_dim, c.num_key_value_heads, c.rotary_dim) == (64, 128, 8, 64)
    assert (c.num_local_experts, c.num_experts_per_tok, c.intermediate_size) == (32, 2, 9216)
    assert c.attn_type_list.count(FULL) == 10 and c.attn_type_list.count(LINEAR) == 70
    assert all((i + 1) % 8 == 0 for i, t in enumerate(c.attn_type_list) if t == FULL)
    assert c.layernorm_mlp_alpha == pytest.approx(3.5565588200778455, rel=1e-15)
    assert c.rope_theta == 1e7 and c.rms_norm_eps == 1e-5 and c.block_size == 256


REMOTE = {  # the released checkpoint's config.json, shortened to 8 layers
    "architectures": ["MiniMaxM1ForCausalLM"], "attn_type_list": [0, 0, 0, 0, 0, 0, 0, 1],
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 6144, "intermediate_size": 9216,
    "layernorm_full_attention_alpha": 3.5565588200778455, "layernorm_full_attention_beta": 1.0,
    "layernorm_linear_attention_alpha": 3.5565588200778455, "layernorm_linear_attention_beta": 1.0,
    "layernorm_mlp_alpha": 3.5565588200778455, "layernorm_mlp_beta": 1.0, "max_position_embeddings": 10240000,
    "model_type": "minimax_m1", "num_attention_heads": 64, "num_experts_per_tok": 2, "num_hidden_layers": 8,
    "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": False, "postnorm": True,
    "rms_norm_eps": 1e-05, "rope_theta": 10000000, "rotary_dim": 64, "router_aux_loss_coef": 0.001,
    "router_jitter_noise": 0.0, "shared_intermediate_size": 0, "shared_moe_mode": "sigmoid",
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 200064,
    "bos_token_id": None, "eos_token_id": None,
}


def test_from_hf_remote_form(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(REMOTE))
    for src in (REMOTE, tmp_path, tmp_path / "config.json"):
        c = ModelConfig.from_hf(src)
        assert c.attn_type_list == (0,) * 7 + (1,)
        assert c.rotary_dim == 64 and c.rope_theta == 1e7 and c.decay_rule == "remote"
        assert c.param_dtype == "bfloat16" and c.block_size == 256


def test_from_hf_native_form():
    native = {
        "model_type": "minimax", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "layer_types": ["linear_attention", "full_attention"], "block_size": 8,
        "full_attn_alpha_factor": 2.0, "full_attn_beta_factor": 0.5, "linear_attn_alpha_factor": 3.0,
        "linear_attn_beta_factor": 1.5, "mlp_alpha_factor": 4.0, "mlp_beta_factor": 0.25,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}, "num_local_experts": 4,
        "num_experts_per_tok": 2,
    }
    c = ModelConfig.from_hf(native)
    assert c.attn_type_list == (LINEAR, FULL) and c.block_size == 8
    assert c.rotary_dim == 16  # native rotates the whole head
    assert (c.layernorm_full_attention_alpha, c.layernorm_full_attention_beta) == (2.0, 0.5)
    assert (c.layernorm_linear_attention_alpha, c.layernorm_linear_attention_beta) == (3.0, 1.5)
    assert (c.layernorm_mlp_alpha, c.layernorm_mlp_beta) == (4.0, 0.25)
    assert c.rope_theta == 1e4 and c.decay_rule == "native"


def test_to_hf_round_trips_and_carries_both_forms():
    c = ModelConfig.tiny(rotary_dim=8, layernorm_mlp_beta=0.5)
    d = c.to_hf()
    assert ModelConfig.from_hf(d) == c
    assert d["layer_types"] == ["linear_attention", "full_attention"] * 2
    assert d["attn_type_list"] == [0, 1, 0, 1] and d["mlp_beta_factor"] == 0.5 and d["block_size"] == 8
    json.dumps(d)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_key_value_heads", 3),  # does not divide 4 heads
        ("rotary_dim", 7),  # odd
        ("rotary_dim", 32),  # > head_dim
        ("num_experts_per_tok", 5),  # > experts
        ("attn_type_list", (0, 1, 2, 1)),  # unknown layer type
        ("attn_type_list", (0, 1)),  # wrong length
        ("num_attention_heads", 0),
        ("hidden_size", -8),
        ("rms_norm_eps", 0.0),
        ("dtype", "float64"),
        ("hidden_act", "gelu"),
        ("shared_intermediate_size", 128),
        ("decay_rule", "other"),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig.tiny(**{field: value})


def test_unknown_layer_type_string_and_preset():
    with pytest.raises(ValueError, match="unknown layer type"):
        ModelConfig.from_hf({**REMOTE, "attn_type_list": [0, 0, 0, 0, 0, 0, 0, "sliding"]})
    with pytest.raises(ValueError, match="unknown ModelConfig preset"):
        ModelConfig.preset("huge")


def test_hybrid_layout():
    assert hybrid_layout(16) == (0,) * 7 + (1,) + (0,) * 7 + (1,)


def test_from_hf_without_head_dim_needs_heads_to_divide_hidden():
    d = ModelConfig.tiny().to_hf()
    d.pop("head_dim")
    d.update(hidden_size=60, num_attention_heads=8)
    with pytest.raises(ValueError, match="no head_dim and num_attention_heads=8 does not divide hidden_size=60"):
        ModelConfig.from_hf(d)
