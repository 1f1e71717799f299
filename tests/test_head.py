"""The LM head's precision choices (m1jax/model/head.py): config validation, the algorithm each name maps to, and
exact fp32 products on the CPU whatever is chosen (the bf16 head is the one that rounds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import m1jax
from m1jax.model.head import HEAD_PRECISIONS, lm_head_logits


def test_names_map_to_the_split_precision_algorithms():
    P = jax.lax.DotAlgorithmPreset
    assert HEAD_PRECISIONS["bf16x3"] == P.BF16_BF16_F32_X3 and HEAD_PRECISIONS["bf16x6"] == P.BF16_BF16_F32_X6
    assert HEAD_PRECISIONS["highest"] == jax.lax.Precision.HIGHEST
    with pytest.raises(ValueError, match="lm_head_precision"):
        m1jax.ModelConfig.tiny(lm_head_precision="fp64")
    with pytest.raises(ValueError, match="lm_head_precision must be one of"):
        lm_head_logits(jnp.ones((1, 4)), jnp.ones((4, 8)), precision="x3")


@pytest.mark.parametrize("precision", sorted(HEAD_PRECISIONS))
def test_cpu_products_are_fp32_for_every_choice(precision):
    rng = np.random.default_rng()
    h = rng.standard_normal((3, 5, 64)).astype(np.float32)
    w = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
    ref = h.astype(np.float64) @ w.astype(np.float64)
    out = np.asarray(lm_head_logits(jnp.asarray(h), jnp.asarray(w), precision=precision), np.float64)
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 2e-6
    bf16 = np.asarray(lm_head_logits(jnp.asarray(h), jnp.asarray(w), dtype="bfloat16"), np.float64)
    assert np.max(np.abs(bf16 - ref)) / np.max(np.abs(ref)) > 1e-4  # the bf16 head does round


def test_model_uses_the_configured_head():
    cfg = m1jax.ModelConfig.tiny(num_hidden_layers=2, attn_type_list=(0, 1), lm_head_precision="bf16x3")
    model = m1jax.MiniMaxM1(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, cfg.vocab_size)
    out = model(tokens)
    exact = m1jax.MiniMaxM1(cfg.replace(lm_head_precision="highest"), rngs=nnx.Rngs(0))(tokens)
    np.testing.assert_allclose(np.asarray(out), np.asarray(exact), rtol=0, atol=1e-6)  # CPU: both fp32
    half = m1jax.MiniMaxM1(cfg.replace(lm_head_dtype="bfloat16"), rngs=nnx.Rngs(0))(tokens)
    assert float(jnp.max(jnp.abs(half - exact))) > 0


def test_rl_defaults_to_the_split_precision_head():
    """RL's default head is bf16x3 (measured on an H200: experiments/results/lm_head_h200.json); train keeps IEEE fp32;
    an explicit non-default choice is kept."""
    from m1jax.rl.config import default_config as rl_config
    from m1jax.train.config import default_config as train_config

    tiny = m1jax.ModelConfig.tiny()
    assert rl_config(tiny).model.lm_head_precision == "bf16x3"
    assert train_config(tiny).model.lm_head_precision == "highest"
    assert rl_config(tiny.replace(lm_head_precision="bf16x6")).model.lm_head_precision == "bf16x6"
