"""Optimizer settings, loss masking, gradient accumulation, the non-finite guard, FLOP counts."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from m1jax import MiniMaxM1, ModelConfig
from m1jax.data import ByteTokenizer, DataPipeline, TaskSource
from m1jax.train.config import default_config
from m1jax.train.flops import flops_per_token, param_counts
from m1jax.train.loss import cross_entropy_sums
from m1jax.train.optimizer import decay_mask, lr_schedule, make_optimizer, param_path
from m1jax.train.step import (
    abstract_model, init_params, init_train_state, make_loss_and_grads, make_train_step, model_graphdef,
)

MICRO = ModelConfig.tiny(vocab_size=258, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                         attn_type_list=(0, 1), num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         block_size=8)
NANO = MICRO.replace(num_hidden_layers=1, attn_type_list=(1,))  # one softmax layer: compiles fastest


def optim(**kw):
    cfg = default_config(MICRO).optim
    cfg.update(kw)
    return cfg


def test_decay_mask_exempts_norms_and_embedding():
    _, params = model_graphdef(MICRO)
    mask = decay_mask(params, "norm,embed_tokens")
    flat = {param_path(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    assert not flat["embed_tokens"] and not flat["norm/weight"] and not flat["layers/0/self_attn/norm/weight"]
    assert not flat["layers/1/input_layernorm/weight"]
    assert flat["lm_head"] and flat["layers/0/block_sparse_moe/w1"] and flat["layers/1/self_attn/q_proj"]
    assert all(jax.tree.leaves(decay_mask(params, "")))


def test_schedule_warmup_then_cosine_to_floor():
    s = lr_schedule(ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)), 110)
    assert float(s(0)) == 0.0 and np.isclose(float(s(5)), 5e-4) and np.isclose(float(s(10)), 1e-3)
    assert np.isclose(float(s(60)), 1e-4 + 0.5 * 9e-4, rtol=1e-5) and np.isclose(float(s(110)), 1e-4)


def test_cross_entropy_matches_numpy_and_skips_masked_targets(rng):
    b, n, v = 2, 7, 11
    logits = rng.normal(size=(b, n, v)).astype(np.float32)
    batch = {"tokens": rng.integers(0, v, (b, n)).astype(np.int32),
             "segment_ids": np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]], np.int32),
             "loss_mask": np.array([[1, 1, 0, 1, 1, 1, 1], [1] * 7], np.float32)}
    total, count, _ = cross_entropy_sums(jnp.asarray(logits), batch)
    ref, cnt = 0.0, 0
    for i in range(b):
        for t in range(n - 1):
            s = batch["segment_ids"][i]
            if s[t + 1] == s[t] != 0 and batch["loss_mask"][i, t + 1]:
                lp = logits[i, t] - np.log(np.sum(np.exp(logits[i, t])))
                ref -= lp[batch["tokens"][i, t + 1]]
                cnt += 1
    assert int(count) == cnt == 2 + 6 and np.isclose(float(total), ref, rtol=1e-5)


@pytest.fixture(scope="module")
def setup():
    graphdef, _ = model_graphdef(NANO, {"moe": "dense", "lightning": "reference"})
    params = init_params(NANO, 0)
    batch = next(DataPipeline(TaskSource("copy,add", ByteTokenizer()), batch_size=4, seq_len=32, prefetch=0))
    return graphdef, params, batch


def test_grad_accumulation_and_remat_give_the_one_big_batch_gradient(setup):
    graphdef, params, batch = setup
    config = NANO.replace(router_aux_loss_coef=0.0)  # aux statistics are per micro-batch by design
    if not hasattr(abstract_model(NANO), "remat"):
        pytest.skip("this MiniMaxM1 has no remat switch")
    remat_graphdef = model_graphdef(NANO, {"moe": "dense", "lightning": "reference"}, remat=True)[0]
    out = [jax.jit(make_loss_and_grads(g, config, grad_accum_steps=a))(params, batch)
           for g, a in ((graphdef, 1), (remat_graphdef, 2))]
    (l1, s1, g1, n1), (l2, s2, g2, n2) = out
    assert float(n1) == float(n2) and np.isclose(float(l1), float(l2), rtol=1e-5)
    assert np.isclose(float(s1["nll"]), float(s2["nll"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_chunked_lm_head_loss_equals_the_full_head(setup):
    """ce_chunk applies the head 5 positions at a time (31 targets: the last chunk is padded): the same loss, stats
    and gradients as the full [b, n, vocab] head (fp32; only the summation order differs)."""
    graphdef, params, batch = setup
    full = jax.jit(make_loss_and_grads(graphdef, NANO))(params, batch)
    chunked = jax.jit(make_loss_and_grads(graphdef, NANO, ce_chunk=5))(params, batch)
    assert np.isclose(float(full[0]), float(chunked[0]), rtol=1e-6)
    for k in ("nll", "correct"):
        assert np.isclose(float(full[1][k]), float(chunked[1][k]), rtol=1e-6), k
    for a, b in zip(jax.tree.leaves(full[2]), jax.tree.leaves(chunked[2]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_chunked_lm_head_loss_never_holds_the_full_logits():
    """Compiled scratch memory of loss + grads (XLA's memory analysis, nothing run): with a 16 MiB [4, 256, 4096]
    fp32 logits tensor at stake, chunks of 32 positions need far less than the full head."""
    config = NANO.replace(vocab_size=4096)
    graphdef, abstract = model_graphdef(config, {"moe": "dense", "lightning": "reference"})
    batch = {k: jax.ShapeDtypeStruct((4, 256), jnp.float32 if k == "loss_mask" else jnp.int32)
             for k in ("tokens", "segment_ids", "positions", "loss_mask")}

    def temp(chunk):
        fn = jax.jit(make_loss_and_grads(graphdef, config, ce_chunk=chunk))
        return fn.lower(abstract, batch).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = 4 * 256 * 4096 * 4
    assert temp(32) + logits_bytes < temp(0)


def test_non_finite_step_leaves_state_unchanged(setup):
    graphdef, params, batch = setup
    tx, schedule = make_optimizer(optim(lr=1e-2, warmup_steps=0), 10)
    bad = jax.tree.map(jnp.copy, params)
    bad["lm_head"] = bad["lm_head"].at[0, 0].set(jnp.nan)
    state = init_train_state(bad, tx)
    before = jax.tree.map(np.asarray, state)
    state, m = make_train_step(graphdef, tx, schedule, NANO)(state, batch)
    assert float(m["finite"]) == 0.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.tree.map(np.asarray, state)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_param_counts_match_the_model():
    model = nnx.eval_shape(lambda: MiniMaxM1(MICRO, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    counts = param_counts(MICRO)
    assert counts["total"] == n
    inactive = MICRO.num_hidden_layers * (MICRO.num_local_experts - MICRO.num_experts_per_tok) * 3 * 32 * 32
    assert counts["active"] == n - inactive
    full = param_counts(ModelConfig.minimax_m1_456b())
    assert 455e9 < full["total"] < 457e9
    assert 45.5e9 < full["active"] - 2 * 200064 * 6144 < 46.5e9  # the reported 45.9B active (no embeddings)
    f = flops_per_token(MICRO, 128)
    assert f["total"] == f["matmul"] + f["attention"] > 6 * (counts["active"] - counts["embedding"]) * 0.99
