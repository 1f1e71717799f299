"""Parameter counts, training FLOPs per token (lightning, softmax and active MoE), device peaks, MFU.

Counts are of matmul FLOPs (2 per multiply-add), training = 3 x forward (backward = 2 x forward).
Attention cores are counted for causal attention over the full ``seq_len`` (packing shortens real
contexts, so MFU is slightly overstated for packed short documents, as is usual).
"""

from __future__ import annotations

import jax

from m1jax.config import ModelConfig

# Dense peak TFLOP/s per chip: (bf16/fp16, fp32 matmuls as the default precision runs them:
# TF32 tensor cores on NVIDIA, bf16 passes on TPU). Matched by substring of device_kind, first hit wins.
PEAK_TFLOPS = (
    ("GB200", (2250.0, 1100.0)),
    ("B200", (2250.0, 1100.0)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H100", (989.0, 494.0)),
    ("H200", (989.0, 494.0)),
    ("H800", (989.0, 494.0)),
    ("A100", (312.0, 156.0)),
    ("L40S", (362.0, 183.0)),
    ("L4", (121.0, 60.0)),
    ("TPU v6", (918.0, 918.0)),
    ("TPU v5p", (459.0, 459.0)),
    ("TPU v5", (197.0, 197.0)),  # v5e ("TPU v5 lite")
    ("TPU v4", (275.0, 275.0)),
)


def device_peak_flops(device=None, dtype: str = "bfloat16") -> float | None:
    """Peak FLOP/s of one device for matmuls in ``dtype``; None when unknown (e.g. CPU)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, (low, fp32) in PEAK_TFLOPS:
        if name.lower() in kind.lower():
            return 1e12 * (fp32 if dtype == "float32" else low)
    return None


def param_counts(c: ModelConfig) -> dict[str, int]:
    """total, active (top-k experts only) and embedding parameter counts."""
    D, H, K, Dh = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    E, inter, k = c.num_local_experts, c.intermediate_size, c.num_experts_per_tok
    lightning = D * 3 * H * Dh + 2 * D * H * Dh + H * Dh  # qkv, gate, out, norm
    softmax = D * H * Dh + 2 * D * K * Dh + H * Dh * D
    expert = 3 * D * inter
    total = embed = c.vocab_size * D
    active = embed
    for i in range(c.num_hidden_layers):
        attn = lightning if c.is_lightning(i) else softmax
        common = attn + 2 * D + D * E  # two norms, router
        total += common + E * expert
        active += common + k * expert
    head = D * c.vocab_size + D  # LM head, final norm
    return {"total": total + head, "active": active + head, "embedding": embed}


def flops_per_token(c: ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token: ``matmul`` (projections, router, active experts, LM head),
    ``attention`` (softmax QK^T / PV cores plus lightning intra-block and state terms), ``total``."""
    D, H, K, Dh = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    E, inter, k = c.num_local_experts, c.intermediate_size, c.num_experts_per_tok
    n = int(seq_len)
    block = min(c.block_size, n)
    matmul = 2 * D * c.vocab_size  # LM head (the embedding is a lookup)
    attention = 0.0
    for i in range(c.num_hidden_layers):
        matmul += 2 * (D * E + k * 3 * D * inter)  # router + active experts
        if c.is_lightning(i):
            matmul += 2 * (D * 3 * H * Dh + 2 * D * H * Dh)
            # intra-block causal scores + weighted sum over ~(block + 1) / 2 keys; q @ state; state update
            attention += 2 * 2 * H * Dh * (block + 1) / 2 + 2 * 2 * H * Dh * Dh
        else:
            matmul += 2 * (D * H * Dh + 2 * D * K * Dh + H * Dh * D)
            attention += 2 * 2 * H * Dh * (n + 1) / 2
    return {"matmul": 3.0 * matmul, "attention": 3.0 * attention, "total": 3.0 * (matmul + attention)}


def mfu(flops_per_second: float, peak_per_device: float | None, num_devices: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown."""
    if not peak_per_device:
        return None
    return flops_per_second / (peak_per_device * num_devices)
