"""m1jax.rl.losses against float64 numpy closed forms of each loss and its gradient w.r.t. the log-probs, and the
properties the RL loop relies on: inert masked positions, micro-batching, one clip-fraction definition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.rl import (
    LOSSES,
    cispo_loss,
    dapo_loss,
    dynamic_sampling_mask,
    get_loss,
    grpo_loss,
    group_advantages,
    masked_mean,
    overlong_penalty,
    token_entropy,
)

# Every loss and mode, with a reference policy for GRPO's KL term (filled in per test).
CASES = {
    "cispo": (cispo_loss, {"eps_low": 0.2, "eps_high": 0.28}),
    "cispo_trust_region": (cispo_loss, {"eps_low": 0.2, "eps_high": 0.28, "trust_region_mask": True}),
    "dapo": (dapo_loss, {"eps_low": 0.2, "eps_high": 0.28}),
    "grpo": (grpo_loss, {"eps": 0.2, "beta": 0.04}),
}


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


def test_on_policy_step_cispo_equals_token_level_ppo(rng):
    """The trap in the comparison: at r == 1 (logp == old_logp, one update per rollout) no CISPO weight is
    clipped (w = 1) and PPO's min() takes the ratio branch, so CISPO's gradient -w A grad(logp) / N and PPO-clip's
    -r A grad(logp) / N are the same REINFORCE gradient -A / N per token WHEN BOTH ARE NORMALISED BY THE SAME N.
    That holds for CISPO vs DAPO (both token-level, N = sum_i |o_i|) at any lengths. GRPO averages per sample,
    so its gradient is -A_i / (|o_i| G): equal to the others' only when every |o_i| is the same (N = |o| G);
    on ragged lengths it is that closed form instead."""
    logp, _, adv, mask = _batch(rng)
    assert len(set(mask.sum(1))) > 1  # ragged
    want = -adv[:, None] * mask / mask.sum()
    for fn, kw in ((cispo_loss, {"eps_high": 0.1}), (dapo_loss, {})):
        _, g = _grad(fn, logp, logp, adv, mask, **kw)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-8, err_msg=fn.__name__)
    _, g = _grad(grpo_loss, logp, logp, adv, mask, beta=0.0)
    np.testing.assert_allclose(g, -adv[:, None] * mask / mask.sum(1, keepdims=True) / len(adv), rtol=1e-5, atol=1e-8)
    full = np.ones_like(mask)
    _, g_cispo = _grad(cispo_loss, logp, logp, adv, full, eps_high=0.1)
    _, g_grpo = _grad(grpo_loss, logp, logp, adv, full, beta=0.0)
    np.testing.assert_allclose(g_grpo, g_cispo, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(g_cispo, -adv[:, None] * full / full.sum(), rtol=1e-5, atol=1e-8)


def test_cispo_trust_region_mask_zeroes_exactly_the_ppo_clipped_tokens_normalised_by_all_tokens(rng):
    """Eq. 6-7: M_t drops the PPO-clipped tokens from the numerator; the normaliser stays sum_i |o_i|."""
    logp, old, adv, mask = _batch(rng)
    eps_low, eps_high = 0.2, 0.28
    r = np.exp(logp - old)
    a = adv[:, None]
    w = np.clip(r, 1 - eps_low, 1 + eps_high)
    outside = ((a > 0) & (r > 1 + eps_high)) | ((a < 0) & (r < 1 - eps_low))
    kw = {"eps_low": eps_low, "eps_high": eps_high, "trust_region_mask": True}
    loss, g = _grad(cispo_loss, logp, old, adv, mask, **kw)
    keep = mask * ~outside
    assert (outside & (mask > 0)).any()
    assert loss == pytest.approx(-(w * a * logp * keep).sum() / mask.sum(), rel=1e-5)
    np.testing.assert_allclose(g, -w * a * keep / mask.sum(), rtol=2e-5, atol=1e-7)
    _, m = cispo_loss(logp, old, adv, mask, **kw)
    assert float(m["tokens"]) == mask.sum()
    assert float(m["active_clipped_tokens"]) == (outside & (mask > 0)).sum()


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


def _value_grad(fn, logp, old, adv, mask, **kw):
    """(loss, metrics as floats, gradient w.r.t. logp) in fp32."""
    (loss, metrics), g = jax.value_and_grad(lambda lp: fn(lp, old, adv, mask, **kw), has_aux=True)(
        jnp.asarray(logp, jnp.float32))
    return float(loss), {k: float(v) for k, v in metrics.items()}, np.asarray(g, np.float64)


def test_zero_variance_groups_get_exactly_zero_advantages(rng):
    """All 0.7 at G=16: R - mean R is a rounding residue (0.7 is not exact in binary) that the tiny std
    would blow up to same-signed advantages of ~0.1; a constant group must give exactly 0."""
    for scale in ("std", "none"):
        assert np.all(np.asarray(group_advantages(np.full((1, 16), 0.7), scale=scale)) == 0)
    rewards = rng.uniform(-1.0, 2.0, (6, 16))
    constant = [1, 3, 4]
    rewards[constant] = rng.uniform(-1.0, 2.0, (3, 1))  # arbitrary constants, none exact in binary
    rewards[4] = 0.7
    a = np.asarray(group_advantages(rewards))
    assert np.all(a[constant] == 0)
    varied = [0, 2, 5]
    np.testing.assert_allclose(a[varied].mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(a[varied].std(1), 1, rtol=1e-4)
    a_none = np.asarray(group_advantages(rewards, scale="none"))
    assert np.all(a_none[constant] == 0)
    np.testing.assert_allclose(a_none[varied], rewards[varied] - rewards[varied].mean(1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="unknown scale 'mad'"):
        group_advantages(rewards, scale="mad")


@pytest.mark.parametrize("garbage", [-np.inf, np.nan, 1e30])
@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_positions_never_reach_the_loss_or_its_gradient(rng, case, garbage):
    """-inf / NaN / 1e30 at masked positions of logp, old_logp, ref_logp, per-token advantages and entropy give
    bit-for-bit the loss, metrics and gradient of the same batch with zeros there; the gradient w.r.t. a masked
    logp is exactly 0. The last row has no token at all."""
    fn, kw = CASES[case]
    logp, old, adv, mask = _batch(rng)
    mask[-1] = 0
    assert (mask[:-1] == 0).any()
    adv = np.broadcast_to(adv[:, None], mask.shape)
    ref = old + rng.uniform(-0.5, 0.5, old.shape)
    ent = rng.uniform(0.0, 3.0, old.shape)

    def run(fill):
        def put(x):
            return jnp.asarray(np.where(mask > 0, x, fill), jnp.float32)

        extra = {"ref_logp": put(ref)} if fn is grpo_loss else {}
        return _value_grad(fn, put(logp), put(old), put(adv), jnp.asarray(mask), entropy=put(ent), **kw, **extra)

    loss, metrics, g = run(garbage)
    want_loss, want_metrics, want_g = run(0.0)
    assert np.isfinite(loss) and np.all(np.isfinite(g)) and all(np.isfinite(v) for v in metrics.values())
    assert loss == want_loss and metrics == want_metrics
    np.testing.assert_array_equal(g, want_g)
    assert np.all(g[mask == 0] == 0) and np.any(g[mask > 0] != 0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_micro_batched_gradient_equals_full_batch(rng, case):
    """Rows split into ragged micro-batches (1, 3 and 3 rows, one with an empty row), each called with the full
    batch's normalizer (tokens; GRPO: samples): the losses and gradients sum to the full batch's. With each
    call's own count (the default) they do not."""
    fn, kw = CASES[case]
    logp, old, adv, mask = _batch(rng, b=7)
    mask[5] = 0
    ref = old + rng.uniform(-0.5, 0.5, old.shape)
    normalizer = mask.any(1).sum() if fn is grpo_loss else mask.sum()

    def run(rows, **extra):
        if fn is grpo_loss:
            extra["ref_logp"] = ref[rows]
        return _value_grad(fn, logp[rows], old[rows], adv[rows], mask[rows], **kw, **extra)

    full_loss, full_metrics, full_g = run(slice(None))
    parts = [run(rows, normalizer=normalizer) for rows in (slice(0, 1), slice(1, 4), slice(4, 7))]
    assert sum(p[0] for p in parts) == pytest.approx(full_loss, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(np.concatenate([p[2] for p in parts]), full_g, rtol=1e-6, atol=1e-9)
    for key in ("tokens", "samples", "clipped_tokens", "active_clipped_tokens"):
        assert sum(p[1][key] for p in parts) == full_metrics[key], key
    own = np.concatenate([run(rows)[2] for rows in (slice(0, 1), slice(1, 4), slice(4, 7))])
    assert not np.allclose(own, full_g, rtol=1e-3)


def test_clip_fraction_means_the_same_for_every_loss(rng):
    """clip_fraction: tokens whose ratio is outside [1 - eps_low, 1 + eps_high], whatever the loss.
    active_clip_fraction: tokens where the clip changed the gradient - PPO-style (DAPO, GRPO, trust-region CISPO)
    A > 0 & r > 1 + eps_high or A < 0 & r < 1 - eps_low (gradient zeroed); plain CISPO: weight clipped and A != 0."""
    logp, old, adv, mask = _batch(rng)
    adv[:2] = 0.0  # clipped ratios that change nothing
    r, a, on = np.exp(logp - old), adv[:, None], mask > 0
    for eps_low, eps_high in ((0.2, 0.2), (0.15, 0.4)):
        outside = ((r < 1 - eps_low) | (r > 1 + eps_high)) & on
        ppo_active = (((a > 0) & (r > 1 + eps_high)) | ((a < 0) & (r < 1 - eps_low))) & on
        cispo_active = outside & (a != 0)
        assert 0 < ppo_active.sum() < cispo_active.sum() < outside.sum()
        band = {"eps_low": eps_low, "eps_high": eps_high}
        runs = [(cispo_loss, band, cispo_active), (cispo_loss, {**band, "trust_region_mask": True}, ppo_active),
                (dapo_loss, band, ppo_active)]
        if eps_low == eps_high:
            runs.append((grpo_loss, {"eps": eps_low}, ppo_active))
        for fn, kw, active in runs:
            _, m = fn(logp, old, adv, mask, **kw)
            m = {k: float(v) for k, v in m.items()}
            assert m["clipped_tokens"] == outside.sum(), (fn.__name__, kw)
            assert m["clip_fraction"] == pytest.approx(outside.sum() / on.sum(), rel=1e-6)
            assert m["active_clipped_tokens"] == active.sum(), (fn.__name__, kw)
            assert m["active_clip_fraction"] == pytest.approx(active.sum() / on.sum(), rel=1e-6)
            assert m["ratio_mean"] == pytest.approx(r[on].mean(), rel=1e-5)


def test_all_masked_batch_is_neutral(rng):
    logp, old, adv, mask = _batch(rng)
    mask[:] = 0
    for case in sorted(CASES):
        fn, kw = CASES[case]
        loss, m, g = _value_grad(fn, logp, old, adv, mask, **kw)
        assert loss == 0 and np.all(g == 0), case
        assert m["ratio_min"] == m["ratio_max"] == m["ratio_mean"] == 1.0, case
        assert m["tokens"] == m["samples"] == m["clip_fraction"] == m["active_clip_fraction"] == 0, case


def test_token_entropy_masked_mean_and_the_entropy_metric(rng):
    logits = rng.standard_normal((3, 5, 11)) * 4 + 500.0  # a naive exp would overflow fp32
    z = logits - logits.max(-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = -(np.exp(lp) * lp).sum(-1)
    ent = np.asarray(token_entropy(jnp.asarray(logits, jnp.float32)))
    assert ent.dtype == np.float32 and ent.shape == (3, 5)
    np.testing.assert_allclose(ent, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(token_entropy(jnp.zeros(7)), np.log(7), rtol=1e-6)
    excluded = np.concatenate([np.full((3, 5, 4), -np.inf), logits], -1)  # banned vocabulary entries
    np.testing.assert_allclose(token_entropy(jnp.asarray(excluded, jnp.float32)), ent, rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(jax.grad(lambda x: token_entropy(x).sum())(jnp.asarray(excluded, jnp.float32))))

    x, mask = rng.standard_normal((4, 6)), rng.random((4, 6)) < 0.5
    assert float(masked_mean(np.where(mask, x, np.nan), mask)) == pytest.approx(x[mask].mean(), rel=1e-5)
    assert float(masked_mean(x, np.zeros_like(mask))) == 0.0
    logp, old, adv, mask = _batch(rng)
    per_token = rng.uniform(0.0, 3.0, logp.shape)
    for fn in LOSSES.values():
        _, m = fn(logp, old, adv, mask, entropy=per_token)
        assert float(m["entropy"]) == pytest.approx(per_token[mask > 0].mean(), rel=1e-5)
        assert "entropy" not in fn(logp, old, adv, mask)[1]


def test_loss_registry():
    assert get_loss("cispo") is cispo_loss and get_loss("grpo") is grpo_loss and get_loss("dapo") is dapo_loss
    with pytest.raises(ValueError, match=r"unknown loss 'ppo'; choose from \['cispo', 'dapo', 'grpo'\]"):
        get_loss("ppo")
