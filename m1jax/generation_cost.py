"""Analytic generation cost: FLOPs and bytes moved per token, prefill and decode, by layer type.

Works for any :class:`~m1jax.config.ModelConfig` (MiniMax-M1 shapes: lightning + softmax layers, top-k
MoE) and for :class:`DeepSeekR1Like` (DeepSeek-V3 / R1 shape: MLA attention, shared + routed experts).
Nothing here runs a model; every number is a closed-form count.

Conventions
-----------
* FLOPs are matmul FLOPs, 2 per multiply-add, of one forward pass (inference). Elementwise work (norms,
  activations, RoPE, softmax exponentials, the MoE weighting) is not counted, except the lightning
  state's decay scaling (``H D^2`` per step, stated below). The embedding lookup costs 0 FLOPs.
* ``position`` = the number of keys the token attends to: its 1-based position in the sequence (the
  context before it plus itself). Generating ``N`` tokens after a prompt of ``P`` tokens is counted as
  ``N`` decode steps at positions ``P+1 .. P+N`` (each generated token passes once through the model;
  the strict count, prefill producing the first token and the last token never being fed back, is the
  same sum shifted by one step).
* Bytes are the HBM traffic a decode step cannot avoid: every weight it touches once per step, the KV
  cache it reads, the lightning states it reads and writes. Activations are ignored (they are
  ``O(batch x hidden)``). Per-token values divide the per-step traffic by ``batch``.

MiniMax-M1 (ModelConfig), per generated token at position t
-----------------------------------------------------------
Sources: MiniMax-M1 report (arXiv 2506.13585), MiniMax-01 report (arXiv 2501.08313), the checkpoint
config (docs/model.md); parameter counts are m1jax.train.flops.param_counts /
flops_per_token (reused, not re-derived: per-layer values are differences of 1- and 2-layer configs).

* dense = 2 x (attention projections + router + top-k experts' FFN + LM head) params:
  lightning layer ``qkv 3HD·d + gate HD·d + out HD·d``; softmax layer ``q HD·d + k,v 2·Hkv·D·d + o HD·d``;
  router ``E·d``; each expert ``3·d·I`` (w1, w3, w2), ``k`` of them; LM head ``d·V``.
* softmax_attention = ``4 H D t`` per softmax layer (``QK^T``: 2HDt, ``PV``: 2HDt; GQA shares K/V
  between query heads but does not reduce FLOPs).
* lightning_attention = ``5 H D^2`` per lightning layer, constant in t: ``q S`` (2HD^2), the rank-1
  update ``k^T v`` accumulated into S (2HD^2) and the decay scaling ``e^{-s} S`` (HD^2).
* bytes: weights = every touched parameter x ``dtype_bytes`` (the non-expert weights, the LM head,
  ``batch`` embedding rows, and per MoE layer ``E (1 - (1 - k/E)^batch)`` experts: the expected number of
  distinct experts hit by ``batch`` tokens routed uniformly and independently, each token picking ``k``
  distinct experts: ``k`` at batch 1, -> ``E`` for large batches); kv_cache = ``2 Hkv D t kv_bytes`` per
  softmax layer (read K and V); lightning_state = ``2 H D^2 state_bytes`` per lightning layer (read and
  write the fp32 state).

Prefill of n tokens (M1): dense = per-token dense x n (LM head on the last position only unless
``lm_head_all_positions``); softmax = ``4 H D n(n+1)/2`` per layer (causal: the sum of the decode costs at
positions 1..n); lightning, chunked with block B (``config.block_size``), per block of m tokens:
intra-block ``(Q K^T) V`` on the m x m block ``4 H D m^2``, inter-block ``Q S`` ``2 H m D^2``, state update
``K^T V`` ``2 H m D^2`` and decay ``H D^2``, i.e. ~``n (4 H D B + 4 H D^2)``: O(n B H D) + O(n H D^2).

DeepSeek-R1-like shape (DeepSeekR1Like), per generated token at position t
--------------------------------------------------------------------------
Sources: transformers' ``DeepseekV3Config`` defaults (read at transformers 5.24), DeepSeek-V3 report
(arXiv 2412.19437: 61 layers, 671B total / 37B activated, MLA, 1 shared + 256 routed experts, top-8,
first 3 layers dense), DeepSeek-V2 report (arXiv 2405.04434, section 2.1: MLA and the weight absorption
used at inference). R1 has V3's architecture. The multi-token-prediction module (``num_mtp_layers``) is
not used by plain decoding and is not counted.

* MLA projections per layer (d=7168, H=128, q_lora 1536, kv_lora 512, nope 128, rope 64, v 128):
  ``q_a d·1536``, ``q_b 1536·H(128+64)``, ``kv_a d·(512+64)`` (the latent and the shared rope key),
  ``kv_b 512·H(128+128)`` (K_nope and V up-projections), ``o H·128·d``.
* FFN: layers 0-2 dense SwiGLU ``3·d·18432``; layers 3-60 router ``256·d`` + 8 routed + 1 shared experts
  of ``3·d·2048``. LM head ``d·129280``.
* dense = 2 x those matmul params. The attention core per layer at position t depends on the MLA form:

  - ``"absorbed"`` (what DeepSeek's decode inference runs, and the headline here): W_UK is absorbed into
    the query and W_UV into the output, so attention runs directly on the cached 512-dim latent plus
    the 64-dim rope key, MQA-like: ``QK^T 2 H (512+64) t + PV 2 H 512 t = 278,528 t``. The absorption
    matmuls (2·H·128·512 each side) cost exactly 2 x kv_b params, so "dense" is unchanged. Cache: 576
    values per token per layer.
  - ``"decompressed"`` (non-absorbed, K/V up-projected once per token and cached as ordinary MHA K/V):
    ``2 H (128+64) t + 2 H 128 t = 81,920 t``. Cache: ``H (128+64+128)`` values per token per layer.
  - ``"recompute"`` (non-absorbed, latent cache, every cached latent up-projected again each step):
    ``81,920 t + 2·kv_b·t`` (kv_b's FLOPs move from "dense" into the attention term).

Prefill (R1): dense x n; attention ``coef x n(n+1)/2`` in the chosen form (``"decompressed"`` by default:
DeepSeek's prefill is compute-bound and runs the non-absorbed form).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from m1jax.config import FULL, LINEAR, ModelConfig
from m1jax.train.flops import flops_per_token, param_counts

MLA_FORMS = ("absorbed", "decompressed", "recompute")


@dataclasses.dataclass(frozen=True)
class DeepSeekR1Like:
    """DeepSeek-V3 / R1 shape: the defaults of transformers' DeepseekV3Config (61 layers, MLA, 37B active)."""

    vocab_size: int = 129280
    hidden_size: int = 7168
    num_hidden_layers: int = 61
    first_k_dense_replace: int = 3  # layers 0..2 use a dense FFN
    intermediate_size: int = 18432  # dense FFN
    moe_intermediate_size: int = 2048  # each routed and shared expert
    n_routed_experts: int = 256
    num_experts_per_tok: int = 8
    n_shared_experts: int = 1
    num_attention_heads: int = 128
    q_lora_rank: int = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128

    def is_moe(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace


def m1_preset() -> ModelConfig:
    """MiniMax-M1 (456B total, 45.9B active in the transformer layers)."""
    return ModelConfig.minimax_m1_456b()


def r1_preset() -> DeepSeekR1Like:
    """DeepSeek-R1 (= DeepSeek-V3 shape, 671B total, 37B activated)."""
    return DeepSeekR1Like()


def expected_experts_hit(num_experts: int, k: int, batch: int) -> float:
    """E (1 - (1 - k/E)^batch): expected distinct experts touched by ``batch`` uniformly routed tokens."""
    return num_experts * (1.0 - (1.0 - k / num_experts) ** batch)


# ------------------------------------------------------------------------------------------ M1 counts
@functools.lru_cache(maxsize=64)
def _m1_terms(c: ModelConfig) -> dict[str, Any]:
    """Per-layer counts by layer type and the head's, from m1jax.train.flops (differences of 1- and
    2-layer variants of ``c``, so the formulas live in one place)."""
    per_type, one = {}, None
    for code in (LINEAR, FULL):
        one = c.replace(num_hidden_layers=1, attn_type_list=(code,))
        two = c.replace(num_hidden_layers=2, attn_type_list=(code, code))
        p1, p2 = param_counts(one), param_counts(two)
        f1 = round(flops_per_token(one, 1)["matmul"] / 3)  # training = 3 x forward
        f2 = round(flops_per_token(two, 1)["matmul"] / 3)
        per_type[code] = {"active": p2["active"] - p1["active"], "total": p2["total"] - p1["total"],
                          "matmul_flops": f2 - f1}
    p1 = param_counts(one)
    head_flops = round(flops_per_token(one, 1)["matmul"] / 3) - per_type[FULL]["matmul_flops"]
    head_params = p1["active"] - p1["embedding"] - per_type[FULL]["active"]  # LM head + final norm
    d, E, k, inter = c.hidden_size, c.num_local_experts, c.num_experts_per_tok, c.intermediate_size
    expert = 3 * d * inter  # one SwiGLU expert: w1, w3 [I, d], w2 [d, I]
    for code in (LINEAR, FULL):
        t = per_type[code]
        t["router_flops"] = 2 * d * E
        t["expert_flops"] = 2 * k * expert
        t["attn_proj_flops"] = t["matmul_flops"] - t["router_flops"] - t["expert_flops"]
    n_lin = sum(1 for i in range(c.num_hidden_layers) if c.is_lightning(i))
    return {"type": per_type, "head_flops": head_flops, "head_params": head_params,
            "embedding": p1["embedding"], "expert_params": expert, "n_lin": n_lin,
            "n_soft": c.num_hidden_layers - n_lin}


def _m1_active(c: ModelConfig) -> dict[str, int]:
    t = _m1_terms(c)
    layers = t["n_lin"] * t["type"][LINEAR]["active"] + t["n_soft"] * t["type"][FULL]["active"]
    total = param_counts(c)["total"]
    return _active_dict(layers, t["head_params"], t["embedding"], total)


def _active_dict(layers: int, head: int, embedding: int, total: int) -> dict[str, int]:
    return {"layers": layers, "lm_head": head, "embedding": embedding, "matmul_and_norms": layers + head,
            "all": layers + head + embedding, "total": total}


def _m1_decode(c, position, batch, dtype_bytes, kv_bytes, state_bytes):
    t = _m1_terms(c)
    lin, soft = t["type"][LINEAR], t["type"][FULL]
    n_lin, n_soft = t["n_lin"], t["n_soft"]
    H, D, Hkv = c.num_attention_heads, c.head_dim, c.num_key_value_heads
    E, k = c.num_local_experts, c.num_experts_per_tok
    soft_core = 4 * H * D * position
    lin_core = 5 * H * D * D
    dense_parts = {
        "attention_projections": n_lin * lin["attn_proj_flops"] + n_soft * soft["attn_proj_flops"],
        "router": (n_lin + n_soft) * lin["router_flops"],
        "experts": (n_lin + n_soft) * lin["expert_flops"],
        "lm_head": t["head_flops"],
    }
    flops = {"dense": sum(dense_parts.values()), "softmax_attention": n_soft * soft_core,
             "lightning_attention": n_lin * lin_core}
    by_layer = {"lightning": n_lin * (lin["matmul_flops"] + lin_core),
                "softmax": n_soft * (soft["matmul_flops"] + soft_core), "lm_head": t["head_flops"]}
    extra_experts = expected_experts_hit(E, k, batch) - k  # experts touched beyond one token's k
    weights = (n_lin * lin["active"] + n_soft * soft["active"] + (n_lin + n_soft) * extra_experts * t["expert_params"]
               + t["head_params"] + min(batch, c.vocab_size) * c.hidden_size)
    step_bytes = {"weights": weights * dtype_bytes,
                  "kv_cache": batch * n_soft * 2 * Hkv * D * position * kv_bytes,
                  "lightning_state": batch * n_lin * 2 * H * D * D * state_bytes}
    return flops, dense_parts, by_layer, step_bytes, weights


def _m1_prefill(c, n, lm_head_all_positions, dtype_bytes, kv_bytes, state_bytes):
    t = _m1_terms(c)
    lin, soft = t["type"][LINEAR], t["type"][FULL]
    n_lin, n_soft = t["n_lin"], t["n_soft"]
    H, D, Hkv, B = c.num_attention_heads, c.head_dim, c.num_key_value_heads, c.block_size
    E, k = c.num_local_experts, c.num_experts_per_tok
    full, rem = divmod(n, B)
    blocks = [B] * full + ([rem] if rem else [])
    lin_core = sum(4 * H * D * m * m + 4 * H * m * D * D + H * D * D for m in blocks)
    soft_core = 4 * H * D * n * (n + 1) // 2
    head = t["head_flops"] * (n if lm_head_all_positions else 1)
    dense = n * (n_lin * lin["matmul_flops"] + n_soft * soft["matmul_flops"]) + head
    flops = {"dense": dense, "softmax_attention": n_soft * soft_core, "lightning_attention": n_lin * lin_core}
    by_layer = {"lightning": n_lin * (n * lin["matmul_flops"] + lin_core),
                "softmax": n_soft * (n * soft["matmul_flops"] + soft_core), "lm_head": head}
    extra_experts = expected_experts_hit(E, k, n) - k
    weights = (n_lin * lin["active"] + n_soft * soft["active"] + (n_lin + n_soft) * extra_experts * t["expert_params"]
               + t["head_params"] + min(n, c.vocab_size) * c.hidden_size)
    bytes_ = {"weights": weights * dtype_bytes, "kv_cache": n_soft * 2 * Hkv * D * n * kv_bytes,
              "lightning_state": n_lin * H * D * D * state_bytes}
    return flops, by_layer, bytes_


# ------------------------------------------------------------------------------------------ R1 counts
def _r1_terms(r: DeepSeekR1Like) -> dict[str, int]:
    d, H = r.hidden_size, r.num_attention_heads
    nope, rope, vd = r.qk_nope_head_dim, r.qk_rope_head_dim, r.v_head_dim
    kv_b = r.kv_lora_rank * H * (nope + vd)
    attn = (d * r.q_lora_rank + r.q_lora_rank * H * (nope + rope) + d * (r.kv_lora_rank + rope) + kv_b
            + H * vd * d)
    return {
        "attn_matmul": attn, "kv_b": kv_b,
        "attn_norms": r.q_lora_rank + r.kv_lora_rank, "layer_norms": 2 * d,
        "dense_ffn": 3 * d * r.intermediate_size, "expert": 3 * d * r.moe_intermediate_size,
        "router": d * r.n_routed_experts, "router_bias": r.n_routed_experts,  # e_score_correction_bias
        "head": d * r.vocab_size, "final_norm": d, "embedding": d * r.vocab_size,
        "n_dense": r.first_k_dense_replace, "n_moe": r.num_hidden_layers - r.first_k_dense_replace,
    }


def _r1_layer_params(r: DeepSeekR1Like, moe: bool, experts: float) -> float:
    """Parameters of one layer touched when ``experts`` routed experts are hit (MoE layers)."""
    t = _r1_terms(r)
    common = t["attn_matmul"] + t["attn_norms"] + t["layer_norms"]
    if not moe:
        return common + t["dense_ffn"]
    return common + t["router"] + t["router_bias"] + (r.n_shared_experts + experts) * t["expert"]


def _r1_active(r: DeepSeekR1Like) -> dict[str, int]:
    t = _r1_terms(r)
    k, E = r.num_experts_per_tok, r.n_routed_experts
    layers = t["n_dense"] * _r1_layer_params(r, False, 0) + t["n_moe"] * _r1_layer_params(r, True, k)
    total = (t["n_dense"] * _r1_layer_params(r, False, 0) + t["n_moe"] * _r1_layer_params(r, True, E)
             + t["head"] + t["final_norm"] + t["embedding"])
    return _active_dict(int(layers), t["head"] + t["final_norm"], t["embedding"], int(total))


def mla_attention_flops_per_key(r: DeepSeekR1Like, form: str = "absorbed") -> int:
    """MLA attention FLOPs per layer per attended key (multiply by the position t)."""
    H, nope, rope, vd, c = r.num_attention_heads, r.qk_nope_head_dim, r.qk_rope_head_dim, r.v_head_dim, r.kv_lora_rank
    if form == "absorbed":
        return 2 * H * (c + rope) + 2 * H * c
    if form == "decompressed":
        return 2 * H * (nope + rope) + 2 * H * vd
    if form == "recompute":
        return 2 * H * (nope + rope) + 2 * H * vd + 2 * _r1_terms(r)["kv_b"]
    raise ValueError(f"mla_form={form!r}: choose from {MLA_FORMS}")


def mla_cache_values_per_token(r: DeepSeekR1Like, form: str = "absorbed") -> int:
    """Cached values per token per layer: latent + rope key (absorbed, recompute) or full per-head K, V."""
    if form in ("absorbed", "recompute"):
        return r.kv_lora_rank + r.qk_rope_head_dim
    if form == "decompressed":
        return r.num_attention_heads * (r.qk_nope_head_dim + r.qk_rope_head_dim + r.v_head_dim)
    raise ValueError(f"mla_form={form!r}: choose from {MLA_FORMS}")


def _r1_dense_parts(r: DeepSeekR1Like, form: str) -> dict[str, int]:
    t = _r1_terms(r)
    L = r.num_hidden_layers
    attn = t["attn_matmul"] - (t["kv_b"] if form == "recompute" else 0)
    return {"attention_projections": 2 * L * attn, "router": 2 * t["n_moe"] * t["router"],
            "experts": 2 * (t["n_dense"] * t["dense_ffn"]
                            + t["n_moe"] * (r.n_shared_experts + r.num_experts_per_tok) * t["expert"]),
            "lm_head": 2 * t["head"]}


def _r1_decode(r, position, batch, dtype_bytes, kv_bytes, form):
    t = _r1_terms(r)
    dense_parts = _r1_dense_parts(r, form)
    core = mla_attention_flops_per_key(r, form) * position
    flops = {"dense": sum(dense_parts.values()), "softmax_attention": r.num_hidden_layers * core,
             "lightning_attention": 0}
    attn_proj = dense_parts["attention_projections"] // r.num_hidden_layers
    by_layer = {"dense_ffn": t["n_dense"] * (attn_proj + core + 2 * t["dense_ffn"]),
                "moe": t["n_moe"] * (attn_proj + core + 2 * t["router"]
                                     + 2 * (r.n_shared_experts + r.num_experts_per_tok) * t["expert"]),
                "lm_head": dense_parts["lm_head"]}
    hit = expected_experts_hit(r.n_routed_experts, r.num_experts_per_tok, batch)
    weights = (t["n_dense"] * _r1_layer_params(r, False, 0) + t["n_moe"] * _r1_layer_params(r, True, hit)
               + t["head"] + t["final_norm"] + min(batch, r.vocab_size) * r.hidden_size)
    step_bytes = {"weights": weights * dtype_bytes,
                  "kv_cache": batch * r.num_hidden_layers * mla_cache_values_per_token(r, form) * position * kv_bytes,
                  "lightning_state": 0}
    return flops, dense_parts, by_layer, step_bytes, weights


# ------------------------------------------------------------------------------------------ public API
def active_params(config: ModelConfig | DeepSeekR1Like) -> dict[str, int]:
    """Active (per-token) parameter counts.

    ``layers``: the decoder layers (attention, norms, router, top-k + shared experts): MiniMax's "45.9B
    active" counts this. ``lm_head``: LM head + final norm. ``embedding``: the input table (a lookup).
    ``matmul_and_norms`` = layers + lm_head: what each token multiplies by (dense FLOPs ~ 2x this).
    ``all`` = everything incl. the embedding table: DeepSeek's "37B activated" matches this.
    ``total``: all parameters (M1 456B, V3/R1 671B without the MTP module).
    """
    if isinstance(config, DeepSeekR1Like):
        return _r1_active(config)
    return _m1_active(config)


def decode_cost(config: ModelConfig | DeepSeekR1Like, position: int, batch: int = 1, *, dtype_bytes: int = 2,
                kv_bytes: int = 2, state_bytes: int = 4, mla_form: str = "absorbed") -> dict[str, Any]:
    """Cost per generated token of one decode step at ``position`` (keys attended, itself included).

    Returns ``flops`` {dense, softmax_attention, lightning_attention, total} (per token, batch-independent),
    ``dense_parts`` {attention_projections, router, experts, lm_head}, ``flops_by_layer_type`` (M1:
    lightning / softmax / lm_head; R1: dense_ffn / moe / lm_head), ``bytes`` {weights, kv_cache,
    lightning_state, total} per token (the step's traffic / batch), ``bytes_per_step``, ``weight_params``
    (parameters touched per step) and ``flops_per_byte``. ``mla_form`` only applies to DeepSeekR1Like.
    """
    if position < 0 or batch < 1:
        raise ValueError(f"need position >= 0 and batch >= 1 (got position={position}, batch={batch})")
    if isinstance(config, DeepSeekR1Like):
        flops, dense_parts, by_layer, step, weights = _r1_decode(config, position, batch, dtype_bytes, kv_bytes,
                                                                 mla_form)
    else:
        flops, dense_parts, by_layer, step, weights = _m1_decode(config, position, batch, dtype_bytes, kv_bytes,
                                                                 state_bytes)
    flops["total"] = sum(flops.values())
    step["total"] = sum(step.values())
    per_token = {key: v / batch for key, v in step.items()}
    return {"position": position, "batch": batch, "flops": flops, "dense_parts": dense_parts,
            "flops_by_layer_type": by_layer, "bytes": per_token, "bytes_per_step": step,
            "weight_params": weights, "flops_per_byte": flops["total"] / per_token["total"]}


def prefill_cost(config: ModelConfig | DeepSeekR1Like, length: int, *, lm_head_all_positions: bool = False,
                 dtype_bytes: int = 2, kv_bytes: int = 2, state_bytes: int = 4,
                 mla_form: str = "decompressed") -> dict[str, Any]:
    """Total cost of prefilling ``length`` tokens (one sequence): ``flops`` {dense, softmax_attention,
    lightning_attention, total}, ``flops_by_layer_type`` and ``bytes`` {weights (experts hit by
    ``length`` tokens), kv_cache (written), lightning_state (final state written), total}."""
    n = int(length)
    if n < 1:
        raise ValueError(f"length must be >= 1 (got {length})")
    if isinstance(config, DeepSeekR1Like):
        if mla_form == "recompute":
            raise ValueError("mla_form='recompute' is a decode-only form (prefill up-projects each latent once: "
                             "use 'decompressed')")
        r, t = config, _r1_terms(config)
        decode = _r1_decode(r, 0, 1, dtype_bytes, kv_bytes, mla_form)
        dense_parts, per_layer = decode[1], decode[2]
        head = dense_parts["lm_head"] * (n if lm_head_all_positions else 1)
        core = r.num_hidden_layers * mla_attention_flops_per_key(r, mla_form) * n * (n + 1) // 2
        dense = n * (sum(dense_parts.values()) - dense_parts["lm_head"]) + head
        flops = {"dense": dense, "softmax_attention": core, "lightning_attention": 0}
        share = core // r.num_hidden_layers
        by_layer = {"dense_ffn": n * per_layer["dense_ffn"] + t["n_dense"] * share,
                    "moe": n * per_layer["moe"] + t["n_moe"] * share, "lm_head": head}
        hit = expected_experts_hit(r.n_routed_experts, r.num_experts_per_tok, n)
        weights = (t["n_dense"] * _r1_layer_params(r, False, 0) + t["n_moe"] * _r1_layer_params(r, True, hit)
                   + t["head"] + t["final_norm"] + min(n, r.vocab_size) * r.hidden_size)
        bytes_ = {"weights": weights * dtype_bytes,  # the latent cache is what is stored, whatever the form
                  "kv_cache": r.num_hidden_layers * mla_cache_values_per_token(r, "absorbed") * n * kv_bytes,
                  "lightning_state": 0}
    else:
        flops, by_layer, bytes_ = _m1_prefill(config, n, lm_head_all_positions, dtype_bytes, kv_bytes, state_bytes)
    flops["total"] = sum(flops.values())
    bytes_["total"] = sum(bytes_.values())
    return {"length": n, "flops": flops, "flops_by_layer_type": by_layer, "bytes": bytes_,
            "flops_per_token": flops["total"] / n}


def decode_flops_affine(config: ModelConfig | DeepSeekR1Like, **kw) -> tuple[float, float]:
    """(a, b) with decode FLOPs per token at position t = a + b t (exact: every term is affine in t)."""
    a = decode_cost(config, 0, **kw)["flops"]["total"]
    return float(a), float(decode_cost(config, 1, **kw)["flops"]["total"] - a)


def generation_flops(config: ModelConfig | DeepSeekR1Like, prompt: int, lengths, *, include_prefill: bool = False,
                     **kw) -> np.ndarray:
    """Cumulative FLOPs to generate each N in ``lengths`` tokens after a ``prompt``-token prompt.

    Closed form of sum_{t=P+1}^{P+N} (a + b t) = a N + b (P N + N (N + 1) / 2), vectorised over ``lengths``
    (float64); ``include_prefill`` adds ``prefill_cost(config, prompt)`` (its own default MLA form).
    ``kw`` goes to :func:`decode_cost` (e.g. ``mla_form``).
    """
    a, b = decode_flops_affine(config, **kw)
    N = np.asarray(lengths, dtype=np.float64)
    P = float(prompt)
    out = a * N + b * (P * N + N * (N + 1.0) / 2.0)
    if include_prefill and prompt > 0:
        out = out + prefill_cost(config, prompt)["flops"]["total"]
    return out
