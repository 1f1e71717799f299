"""m1jax.rl.losses against float64 numpy closed forms of each loss and its gradient w.r.t. the log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.rl import (
    cispo_loss,
    dapo_loss,
    dynamic_sampling_mask,
    grpo_loss,
    group_advantages,
    overlong_penalty,
)


def _batch(rng, b=6, t=9):
    """Log-probs whose ratios span ~[0.3, 3] (many clipped both ways), ragged lengths, mixed-sign advantages."""
    old = -rng.uniform(0.1, 4.0, (b, t))
    logp = old + rng.uniform(-1.2, 1.1, (b, t))
    lengths = rng.integers(2, t + 1, b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    adv = rng.standard_normal(b)
    return logp, old, adv, mask


def _grad(fn, logp, old, adv, mask, **kw):
    loss, g = jax.value_and_grad(lambda lp: fn(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), **kw)[0])(
        jnp.asarray(logp, jnp.float32))
    return float(loss), np.asarray(g, np.float64)


def test_cispo_value_and_gradient(rng):
    logp, old, adv, mask = _batch(rng)
    eps_low, eps_high = 0.3, 0.5
    r = np.exp(logp - old)
    w = np.clip(r, 1 - eps_low, 1 + eps_high)
    n = mask.sum()
    loss, g = _grad(cispo_loss, logp, old, adv, mask, eps_low=eps_low, eps_high=eps_high)
    assert loss == pytest.approx(-(w * adv[:, None] * logp * mask).sum() / n, rel=1e-5)
    # The weight is a constant: every token, clipped or not, gets -w A / N.
    np.testing.assert_allclose(g, -w * adv[:, None] * mask / n, rtol=2e-5, atol=1e-7)
    assert np.all(g[mask > 0] != 0)


def test_ppo_style_losses_drop_clipped_tokens_cispo_keeps_them(rng):
    logp, old, adv, mask = _batch(rng)
    r = np.exp(logp - old)
    eps_low, eps_high = 0.2, 0.28
    a = adv[:, None]
    unclipped = r * a <= np.clip(r, 1 - eps_low, 1 + eps_high) * a  # min() picks the ratio branch
    n = mask.sum()
    surrogate = np.minimum(r * a, np.clip(r, 1 - eps_low, 1 + eps_high) * a)
    loss, g = _grad(dapo_loss, logp, old, adv, mask, eps_low=eps_low, eps_high=eps_high)
    assert loss == pytest.approx(-(surrogate * mask).sum() / n, rel=1e-5)
    np.testing.assert_allclose(g, -np.where(unclipped, r * a, 0.0) * mask / n, rtol=2e-5, atol=1e-7)
    dropped = (~unclipped) & (mask > 0)
    assert dropped.sum() >= 3  # the batch does exercise clipping
    _, g_cispo = _grad(cispo_loss, logp, old, adv, mask, eps_low=eps_low, eps_high=eps_high)
    assert np.all(g[dropped] == 0) and np.all(g_cispo[dropped] != 0)


def test_grpo_value_and_gradient_with_kl(rng):
    logp, old, adv, mask = _batch(rng)
    ref = old + rng.uniform(-0.5, 0.5, old.shape)
    eps, beta = 0.2, 0.04
    r = np.exp(logp - old)
    a = adv[:, None]
    clip_r = np.clip(r, 1 - eps, 1 + eps)
    kl = np.exp(ref - logp) - (ref - logp) - 1
    per_token = np.minimum(r * a, clip_r * a) - beta * kl
    lengths = mask.sum(1)
    loss, g = _grad(grpo_loss, logp, old, adv, mask, eps=eps, beta=beta, ref_logp=jnp.asarray(ref))
    assert loss == pytest.approx(-np.mean((per_token * mask).sum(1) / lengths), rel=1e-5)
    d_token = np.where(r * a <= clip_r * a, r * a, 0.0) - beta * (1 - np.exp(ref - logp))
    np.testing.assert_allclose(g, -d_token * mask / lengths[:, None] / len(adv), rtol=2e-5, atol=1e-7)


def test_on_policy_step_all_losses_are_reinforce(rng):
    """The trap in the comparison: with r == 1 (one update per rollout) CISPO, DAPO and (equal lengths,
    no KL) GRPO all give the REINFORCE gradient -A / N."""
    logp, _, adv, _ = _batch(rng)
    mask = np.ones_like(logp)
    want = -adv[:, None] * mask / mask.sum()
    for fn, kw in ((cispo_loss, {"eps_high": 0.1}), (dapo_loss, {}), (grpo_loss, {"beta": 0.0})):
        _, g = _grad(fn, logp, logp, adv, mask, **kw)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-8, err_msg=fn.__name__)


def test_cispo_trust_region_mask_zeroes_exactly_the_ppo_clipped_tokens(rng):
    logp, old, adv, mask = _batch(rng)
    eps_low, eps_high = 0.2, 0.28
    r = np.exp(logp - old)
    a = adv[:, None]
    outside = ((a > 0) & (r > 1 + eps_high)) | ((a < 0) & (r < 1 - eps_low))
    _, g = _grad(cispo_loss, logp, old, adv, mask, eps_low=eps_low, eps_high=eps_high, trust_region_mask=True)
    keep = mask * ~outside
    assert (outside & (mask > 0)).any()
    np.testing.assert_allclose(g, -np.clip(r, 1 - eps_low, 1 + eps_high) * a * keep / keep.sum(), rtol=2e-5,
                               atol=1e-7)


def test_metrics_and_padding(rng):
    logp, old, adv, mask = _batch(rng)
    _, m = cispo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    r = np.exp(logp - old)[mask > 0]
    assert float(m["tokens"]) == mask.sum()
    assert float(m["ratio_max"]) == pytest.approx(r.max(), rel=1e-5)
    assert float(m["ratio_min"]) == pytest.approx(r.min(), rel=1e-5)
    assert float(m["clip_fraction"]) == pytest.approx(np.mean((r > 1.28) | (r < 0.8)), rel=1e-5)
    # Padding is inert: garbage log-probs under mask 0 change nothing.
    junk = np.where(mask > 0, logp, 50.0)
    assert float(cispo_loss(junk, old, adv, mask)[0]) == pytest.approx(float(cispo_loss(logp, old, adv, mask)[0]))


def test_group_advantages_and_data_helpers():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 0.0]])
    a = np.asarray(group_advantages(rewards))
    np.testing.assert_allclose(a.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(a[[0, 2]].std(1), 1, rtol=1e-4)
    assert np.all(a[1] == 0)  # a constant group carries no signal
    correct = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]], bool)
    assert np.asarray(dynamic_sampling_mask(correct)).tolist() == [True, False, False, True]
    pen = np.asarray(overlong_penalty([100, 768, 896, 1024, 2000], max_len=1024, cache_len=256))
    np.testing.assert_allclose(pen, [0, 0, -0.5, -1, -1])


def test_bad_shapes_are_named():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="old_logp shape"):
        cispo_loss(x, jnp.zeros((2, 4)), jnp.zeros(2), x)
    with pytest.raises(ValueError, match="advantages must be"):
        dapo_loss(x, x, jnp.zeros(3), x)
    with pytest.raises(ValueError, match=r"logp must be \[batch, seq\]"):
        grpo_loss(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match="rewards must be"):
        group_advantages(jnp.zeros(4))
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty([1], max_len=10, cache_len=20)
