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


def test_split_precision_head_backward_is_bf16_with_fp32_accumulation(rng):
    """The split-precision heads' written-out backward (the GPU / TPU path; on a CPU lm_head_logits takes IEEE fp32
    both ways): forward as the fp32 products, gradients = float64 products of the bf16-rounded operands, dh in h's
    fp32, the fp32 weight's gradient fp32, and both backward dots on bf16 operands."""
    from m1jax.model.head import split_precision_logits

    h = jnp.asarray(rng.standard_normal((2, 3, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((32, 48)) / 6, jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 3, 48)), jnp.float32)
    out, vjp = jax.vjp(lambda h, w: split_precision_logits(h, w, "bf16x3"), h, w)
    ref = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
    assert np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)) < 2e-6  # CPU: fp32 products
    dh, dw = vjp(g)
    assert dh.dtype == jnp.float32 and dw.dtype == jnp.float32
    r = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float64)  # noqa: E731
    dh_ref = r(g) @ r(w).T
    dw_ref = np.einsum("bti,bto->io", r(h), r(g))
    for got, want in ((dh, dh_ref), (dw, dw_ref)):
        assert np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)) < 1e-6
    jaxpr = jax.make_jaxpr(vjp)(g)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 2 and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
