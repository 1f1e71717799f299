"""Tiny random transformers MiniMax models for parity tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import MiniMaxConfig, MiniMaxForCausalLM

SPEC_TINY = dict(  # docs/model.md §7
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
    num_experts_per_tok=2, max_position_embeddings=512,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    block_size=8, full_attn_alpha_factor=3.5566, linear_attn_alpha_factor=3.5566,
    mlp_alpha_factor=3.5566, rope_parameters={"rope_type": "default", "rope_theta": 1e7},
    bos_token_id=None, eos_token_id=None,
)
OTHER_TINY = dict(  # a second shape: 6 layers in a non-trivial order, 8 heads / 2 kv, 6 experts top-3
    vocab_size=97, hidden_size=48, intermediate_size=40, num_hidden_layers=6,
    num_attention_heads=8, num_key_value_heads=2, head_dim=8, num_local_experts=6,
    num_experts_per_tok=3, max_position_embeddings=256,
    layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention",
                 "linear_attention", "full_attention"],
    block_size=4, full_attn_alpha_factor=2.2, full_attn_beta_factor=0.7, linear_attn_alpha_factor=1.9,
    linear_attn_beta_factor=1.3, mlp_alpha_factor=2.5, mlp_beta_factor=0.9,
    rope_parameters={"rope_type": "default", "rope_theta": 1e4}, rms_norm_eps=1e-5,
    bos_token_id=None, eos_token_id=None,
)


def make_torch_model(seed: int, **config) -> MiniMaxForCausalLM:
    """A native MiniMaxForCausalLM in eval mode with weights large enough that every path matters."""
    torch.manual_seed(seed)
    model = MiniMaxForCausalLM(MiniMaxConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn_like(p) / fan_in**0.5)
    return model


def torch_logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()
