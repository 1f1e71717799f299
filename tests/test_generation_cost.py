"""m1jax.generation_cost against hand-computed small configs and the published parameter counts."""

from __future__ import annotations

import numpy as np
import pytest

from m1jax.config import FULL, LINEAR, ModelConfig
from m1jax.generation_cost import (
    DeepSeekR1Like,
    active_params,
    decode_cost,
    generation_flops,
    m1_preset,
    mla_attention_flops_per_key,
    prefill_cost,
    r1_preset,
)
from m1jax.train.flops import flops_per_token


def two_layer():
    """hidden 64, 4 heads of 16 (2 kv heads), 4 experts of 96 (top-2), vocab 128, block 8: L then F."""
    return ModelConfig.tiny(num_hidden_layers=2, attn_type_list=(LINEAR, FULL))


def test_decode_flops_by_hand():
    c = two_layer()
    # lightning projections: qkv 64 x (3*4*16) + gate 64 x 64 + out 64 x 64
    lightning_proj = 2 * (64 * 192 + 64 * 64 + 64 * 64)  # 40960
    # softmax projections: q 64 x 64, k and v 64 x (2*16), o 64 x 64
    softmax_proj = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64)  # 24576
    router = 2 * 64 * 4  # per layer
    experts = 2 * 2 * (3 * 64 * 96)  # top-2 experts of w1, w3, w2, per layer
    head = 2 * 64 * 128
    assert lightning_proj == 40960 and softmax_proj == 24576 and experts == 73728
    dense = lightning_proj + softmax_proj + 2 * router + 2 * experts + head
    assert dense == 230400
    for t in (1, 7, 100):
        d = decode_cost(c, t)
        f = d["flops"]
        assert f["dense"] == dense
        assert f["softmax_attention"] == 4 * 4 * 16 * t  # QK^T + PV: 4 H D t
        assert f["lightning_attention"] == 2 * 4 * 16 * 16 + 2 * 4 * 16 * 16 + 4 * 16 * 16  # qS + k^T v + decay
        assert f["total"] == dense + 256 * t + 5120
        assert d["dense_parts"] == {"attention_projections": lightning_proj + softmax_proj, "router": 2 * router,
                                    "experts": 2 * experts, "lm_head": head}
        assert d["flops_by_layer_type"] == {"lightning": lightning_proj + router + experts + 5120,
                                            "softmax": softmax_proj + router + experts + 256 * t, "lm_head": head}
    # the same dense count as the training FLOP counter's forward matmuls
    assert dense == flops_per_token(c, 1)["matmul"] / 3


def test_decode_bytes_by_hand():
    c = two_layer()
    t = 10
    lightning_layer = 64 * 192 + 64 * 64 + 64 * 64 + 64 + 2 * 64 + 64 * 4 + 2 * 3 * 64 * 96  # + norms, router
    softmax_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 64 + 64 * 4 + 2 * 3 * 64 * 96
    head = 64 * 128 + 64  # LM head + final norm
    weights = lightning_layer + softmax_layer + head + 64  # + one embedding row
    d = decode_cost(c, t, dtype_bytes=2, kv_bytes=2, state_bytes=4)
    assert d["weight_params"] == weights == 115648
    assert d["bytes"]["weights"] == 2 * weights
    assert d["bytes"]["kv_cache"] == 2 * 2 * 16 * t * 2  # K and V, 2 kv heads of 16, bf16
    assert d["bytes"]["lightning_state"] == 2 * 4 * 16 * 16 * 4  # read + write the fp32 state
    # batch 4: each MoE layer touches 4 (1 - (1 - 2/4)^4) = 3.75 experts; 4 embedding rows; bytes / token
    d4 = decode_cost(c, t, batch=4)
    step_weights = weights - 64 + 4 * 64 + 2 * (3.75 - 2) * 3 * 64 * 96
    assert d4["weight_params"] == pytest.approx(step_weights)
    assert d4["bytes"]["weights"] == pytest.approx(2 * step_weights / 4)
    assert d4["bytes"]["kv_cache"] == d["bytes"]["kv_cache"]
    assert d4["flops"] == d["flops"]


def test_position_dependence():
    for c in (two_layer(), m1_preset()):
        f = [decode_cost(c, t)["flops"] for t in (1000, 2000, 5000)]
        soft = [x["softmax_attention"] for x in f]
        assert soft[1] - soft[0] == soft[0] and soft[2] == 5 * soft[0]  # linear through 0
        assert f[0]["lightning_attention"] == f[1]["lightning_attention"] == f[2]["lightning_attention"]
        assert f[0]["dense"] == f[2]["dense"]
    m1 = decode_cost(m1_preset(), 1)["flops"]
    assert m1["softmax_attention"] == 10 * 4 * 64 * 128
    assert m1["lightning_attention"] == 70 * 5 * 64 * 128 * 128


def test_prefill_by_hand():
    c = two_layer()
    n = 20  # blocks of 8, 8, 4
    p = prefill_cost(c, n)["flops"]
    d = decode_cost(c, 0)["flops"]
    assert p["softmax_attention"] == sum(decode_cost(c, t)["flops"]["softmax_attention"] for t in range(1, n + 1))
    intra = 4 * 4 * 16 * (8 * 8 + 8 * 8 + 4 * 4)  # (QK^T) V on each block
    inter_and_update = 4 * 4 * n * 16 * 16  # Q S and K^T V, 2 H m D^2 each
    decay = 3 * 4 * 16 * 16
    assert p["lightning_attention"] == intra + inter_and_update + decay == 121856
    head = 2 * 64 * 128
    assert p["dense"] == n * (d["dense"] - head) + head
    assert prefill_cost(c, n, lm_head_all_positions=True)["flops"]["dense"] == n * d["dense"]


def test_active_params_match_reports():
    m1 = active_params(m1_preset())
    assert abs(m1["layers"] / 45.9e9 - 1) < 0.01  # MiniMax's 45.9B counts the decoder layers
    assert abs(m1["total"] / 456e9 - 1) < 0.01
    r1 = active_params(r1_preset())
    assert abs(r1["all"] / 37e9 - 1) < 0.03  # DeepSeek's 37B activated (embeddings included)
    assert abs(r1["total"] / 671e9 - 1) < 0.01
    assert r1["matmul_and_norms"] == r1["layers"] + r1["lm_head"]


def test_r1_mla_by_hand():
    r = r1_preset()
    assert mla_attention_flops_per_key(r, "absorbed") == 2 * 128 * (512 + 64) + 2 * 128 * 512 == 278528
    assert mla_attention_flops_per_key(r, "decompressed") == 2 * 128 * (128 + 64) + 2 * 128 * 128 == 81920
    attn_proj = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
    ffn = 3 * (3 * 7168 * 18432) + 58 * ((8 + 1) * 3 * 7168 * 2048 + 7168 * 256)
    dense = 2 * (61 * attn_proj + ffn + 7168 * 129280)
    t = 4096
    d = decode_cost(r, t)["flops"]
    assert d["dense"] == dense
    assert d["softmax_attention"] == 61 * 278528 * t and d["lightning_attention"] == 0
    rec = decode_cost(r, t, mla_form="recompute")["flops"]  # kv_b moves from dense into the attention term
    kv_b = 512 * 128 * 256
    assert rec["dense"] == dense - 2 * 61 * kv_b
    assert rec["softmax_attention"] == 61 * (81920 + 2 * kv_b) * t
    assert decode_cost(r, t, mla_form="decompressed")["bytes"]["kv_cache"] == 61 * 128 * 320 * t * 2
    assert decode_cost(r, t)["bytes"]["kv_cache"] == 61 * 576 * t * 2


@pytest.mark.parametrize("config,kw", [(two_layer(), {}), (DeepSeekR1Like(), {"mla_form": "absorbed"}),
                                       (DeepSeekR1Like(), {"mla_form": "decompressed"})])
def test_cumulative_is_sum_of_per_token(config, kw):
    P, lengths = 5, [1, 7, 20]
    got = generation_flops(config, P, lengths, **kw)
    want = [sum(decode_cost(config, P + i, **kw)["flops"]["total"] for i in range(1, n + 1)) for n in lengths]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with_prefill = generation_flops(config, P, lengths, include_prefill=True, **kw)
    np.testing.assert_allclose(with_prefill - got, prefill_cost(config, P)["flops"]["total"], rtol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError):
        decode_cost(two_layer(), -1)
    with pytest.raises(ValueError):
        decode_cost(r1_preset(), 10, mla_form="nope")
    with pytest.raises(ValueError):
        prefill_cost(r1_preset(), 10, mla_form="recompute")
