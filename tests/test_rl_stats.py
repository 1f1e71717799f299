"""m1jax.rl.stats on synthetic data with known answers: curve summaries, Kaplan-Meier by hand, bootstrap CIs,
probability of improvement."""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest

from m1jax.rl.stats import (
    CI,
    auc,
    bootstrap_ci,
    censored_steps_to,
    final_value,
    kaplan_meier,
    km_median,
    km_median_ci,
    paired_bootstrap_diff,
    paired_probability_of_improvement,
    probability_of_improvement,
    probability_of_improvement_ci,
    restricted_mean,
    restricted_mean_ci,
    steps_to,
    stratified_bootstrap_ci,
)

# Textbook KM example: at t=1 6 at risk, 1 event; t=2 5 at risk, 1 event (+1 censored at 2, still at risk);
# t=3 3 at risk, 1 event; t=4 censored; t=5 1 at risk, 1 event.
TIMES, EVENTS = [1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1]
KM_T = [1, 2, 3, 5]
KM_S = [F(5, 6), F(5, 6) * F(4, 5), F(5, 6) * F(4, 5) * F(2, 3), F(0)]  # 5/6, 2/3, 4/9, 0


def test_auc_constant_linear_and_upto():
    x = np.array([0.0, 10, 30, 60, 100])
    assert auc(x, np.full(5, 0.3)) == pytest.approx(0.3)
    assert auc(x, x / 100) == pytest.approx(0.5)  # mean of a linear ramp 0 -> 1
    assert auc(x + 50, x / 100) == pytest.approx(0.5)  # normalised by the x range, not by x[-1]
    assert auc([5.0], [0.7]) == 0.7
    assert auc(x, x / 100, upto=50) == pytest.approx(0.25)  # ramp 0 -> 0.5 over [0, 50], interpolated end
    with pytest.raises(ValueError):
        auc(x, x / 100, upto=101)
    with pytest.raises(ValueError):
        auc([0.0, 0.0], [1.0, 1.0])
    assert final_value([0.1, 0.2, 0.4, 0.6]) == 0.6
    assert final_value([0.1, 0.2, 0.4, 0.6], last=2) == pytest.approx(0.5)


def test_steps_to_and_censoring():
    x = [0, 10, 20, 30]
    y = [0.1, 0.4, 0.39, 0.8]
    assert steps_to(x, y, 0.4) == 10  # first crossing, >= is inclusive
    assert steps_to(x, y, 0.5) == 30
    assert steps_to(x, y, 0.05) == 0
    assert steps_to(x, y, 0.9) is None
    times, events = censored_steps_to([(x, y), ([0, 5, 7], [0.0, 0.2, 0.3])], 0.5)
    np.testing.assert_array_equal(times, [30, 7])  # the never-reaching run is censored at its last x
    np.testing.assert_array_equal(events, [True, False])


def test_kaplan_meier_textbook():
    t, s = kaplan_meier(TIMES, EVENTS)
    np.testing.assert_array_equal(t, KM_T)
    np.testing.assert_allclose(s, [float(v) for v in KM_S], rtol=0, atol=1e-15)
    assert km_median(TIMES, EVENTS) == 3  # S(2) = 2/3 > 1/2, S(3) = 4/9 <= 1/2
    t, s = kaplan_meier([3, 4], [0, 0])  # nobody reaches X
    assert t.size == 0 and s.size == 0
    assert km_median([3, 4], [0, 0]) == math.inf


def test_km_median_half_censored():
    times = [1, 2, 3, 10, 10, 10]
    assert km_median(times, [1, 1, 1, 0, 0, 0]) == 3  # S(3) = 1/2 exactly: its left end
    assert km_median(times, [1, 1, 0, 0, 0, 0]) == math.inf  # S stops at 2/3
    # early censoring: censored runs leave the risk set, KM reweights the others
    _, s = kaplan_meier([1, 1, 1, 4, 5, 6], [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(s, [2 / 3, 1 / 3, 0])
    assert km_median([1, 1, 1, 4, 5, 6], [0, 0, 0, 1, 1, 1]) == 5


def test_restricted_mean():
    # S = 1 on [0,1), 5/6 on [1,2), 2/3 on [2,3), 4/9 on [3,5), 0 after
    assert restricted_mean(TIMES, EVENTS, 4) == pytest.approx(float(1 + F(5, 6) + F(2, 3) + F(4, 9)))  # 53/18
    assert restricted_mean(TIMES, EVENTS, 6) == pytest.approx(float(F(61, 18)))
    assert restricted_mean(TIMES, EVENTS, 0.5) == pytest.approx(0.5)
    # censoring only at the horizon: RMST is the mean with censored runs counted as the horizon
    times, events = np.array([2, 4, 10, 10]), np.array([1, 1, 0, 0], bool)
    assert restricted_mean(times, events, 10) == pytest.approx(6.5)  # 2 + 3/4 * 2 + 1/2 * 6
    assert restricted_mean(times, events, 10) == pytest.approx(np.mean(np.minimum(times, 10)))


def test_bootstrap_ci_contains_mean_and_shrinks(rng):
    widths = []
    for n in (20, 500):
        v = 0.5 + rng.normal(size=n) * 0.1
        v = v - v.mean() + 0.5  # sample mean exactly 0.5
        ci = bootstrap_ci(v, n_boot=500, seed=1)
        assert isinstance(ci, CI)
        assert ci.estimate == pytest.approx(0.5)
        assert ci.lo < 0.5 < ci.hi
        assert ci.hi - ci.lo == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(n), rel=0.3)
        widths.append(ci.hi - ci.lo)
    assert widths[1] < widths[0] / 3
    assert bootstrap_ci(v, n_boot=100, seed=3) == bootstrap_ci(v, n_boot=100, seed=3)  # deterministic
    ci = bootstrap_ci(np.full(10, 0.25), stat=np.median, n_boot=50)
    assert (ci.lo, ci.estimate, ci.hi) == (0.25, 0.25, 0.25)


def test_paired_diff_and_stratified(rng):
    a = rng.uniform(0.2, 0.6, size=12)  # large between-seed spread, constant paired difference
    b = a + 0.1
    ci = paired_bootstrap_diff(a, b, n_boot=300)
    assert (ci.estimate, ci.lo, ci.hi) == pytest.approx((-0.1, -0.1, -0.1))
    ci = paired_bootstrap_diff(b, a, n_boot=300)
    assert (ci.estimate, ci.lo, ci.hi) == pytest.approx((0.1, 0.1, 0.1))
    # one stratum reproduces the unstratified bootstrap exactly (same seed, same draws)
    assert stratified_bootstrap_ci({"task": (b, a)}, n_boot=300) == ci
    assert stratified_bootstrap_ci({"task": a}, n_boot=300, seed=5) == bootstrap_ci(a, n_boot=300, seed=5)
    # two strata: estimate is the mean of per-stratum means; within-stratum resampling keeps both tasks
    c = np.array([0.0, 0.0, 0.0])
    d = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    ci = stratified_bootstrap_ci({"easy": d, "hard": c}, n_boot=200)
    assert (ci.estimate, ci.lo, ci.hi) == (0.5, 0.5, 0.5)
    assert bootstrap_ci(np.concatenate([c, d]), n_boot=200).hi > 0.5  # unstratified mixes the tasks


def test_probability_of_improvement(rng):
    a, b = rng.uniform(0.6, 0.9, size=10), rng.uniform(0.1, 0.4, size=10)
    assert probability_of_improvement(a, b) == 1.0
    assert probability_of_improvement(b, a) == 0.0
    assert probability_of_improvement(a, a) == 0.5
    assert paired_probability_of_improvement(a, b) == 1.0
    assert paired_probability_of_improvement(a, a) == 0.5
    assert probability_of_improvement([1.0, 3.0], [2.0, 2.0, 3.0]) == pytest.approx((0 + 0 + 0 + 1 + 1 + 0.5) / 6)
    assert paired_probability_of_improvement([1.0, 3.0, 2.0], [2.0, 2.0, 2.0]) == pytest.approx(1.5 / 3)
    for paired in (False, True):
        ci = probability_of_improvement_ci(a, b, paired=paired, n_boot=200)
        assert (ci.estimate, ci.lo, ci.hi) == (1.0, 1.0, 1.0)
        ci = probability_of_improvement_ci({"t1": a, "t2": b}, {"t1": b, "t2": a}, paired=paired, n_boot=200)
        assert ci.estimate == 0.5  # mean over tasks of 1 and 0
    x, y = rng.normal(size=15), rng.normal(size=15) + 0.3
    ci = probability_of_improvement_ci(x, y, n_boot=300)
    assert 0 <= ci.lo <= ci.estimate <= ci.hi <= 1 and ci.hi - ci.lo > 0.1


def test_km_median_and_rmst_ci():
    times = np.array([10, 20, 20, 30, 40, 50, 60, 70, 100, 100], float)
    events = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    ci = km_median_ci(times, events, n_boot=300)
    assert ci.estimate == 40  # S(30) = 6/10, S(40) = 5/10
    assert ci.lo <= 40 <= ci.hi < math.inf
    # 6 of 10 censored: undefined median; the upper bound is inf, the lower bound is finite
    events = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    times = np.array([10, 20, 30, 40, 100, 100, 100, 100, 100, 100], float)
    ci = km_median_ci(times, events, n_boot=300)
    assert ci.estimate == math.inf and ci.hi == math.inf and ci.lo < math.inf
    # RMST with censoring only at the horizon is the mean of min(t, horizon): same draws as bootstrap_ci
    ci = restricted_mean_ci(times, events, 100, n_boot=300, seed=2)
    ref = bootstrap_ci(times, n_boot=300, seed=2)
    assert ci == pytest.approx(ref)
