"""Statistics for comparing RL arms (loss configurations) over paired seeds: curve summaries, censored
steps-to-threshold (Kaplan-Meier), and percentile-bootstrap confidence intervals. Pure numpy.

Conventions used throughout:

* A *run* is one (arm, seed[, task]) training run; its held-out accuracy curve is ``y [m]`` logged at
  ``x [m]``, where ``x`` is any strictly increasing budget axis: gradient steps, generated tokens or
  wall-clock seconds. Every function here is agnostic to which one.
* *Steps-to-X* is the first logged ``x`` at which ``y >= X`` (no interpolation between evals, so its
  resolution is the eval interval). A run that never reaches X is *right-censored* at its last ``x``: we
  only know its steps-to-X exceeds that. Censored data go through Kaplan-Meier (``kaplan_meier``,
  ``km_median``, ``restricted_mean``), never through a plain mean.
* A CI is a percentile bootstrap: resample runs with replacement ``n_boot`` times, recompute the
  statistic, take the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates. Every
  bootstrap takes a ``seed`` and is deterministic given it. Functions return ``CI(estimate, lo, hi)``
  where ``estimate`` is the statistic on the original (not resampled) data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np


class CI(NamedTuple):
    """A point estimate and its ``level`` percentile-bootstrap interval ``[lo, hi]``."""

    estimate: float
    lo: float
    hi: float


# ----------------------------------------------------------------------------------------------------------
# Per-run curve summaries


def _curve(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"x and y must be 1-D of the same non-zero length, got {x.shape} and {y.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError("x must be strictly increasing")
    return x, y


def auc(x, y, upto: float | None = None) -> float:
    """Normalised area under the curve ``y(x)``: ``trapezoid(y, x) / (x[-1] - x[0])``, i.e. the mean of the
    piecewise-linear curve over its x range (for accuracy: the mean accuracy over the run). In [0, 1] when
    ``y`` is.

    x, y: [m], x strictly increasing. A single point (m == 1) returns ``y[0]``.
    upto: integrate over ``[x[0], upto]`` only, with ``y(upto)`` linearly interpolated; use it to compare
        runs on a common budget (e.g. arms that generate different numbers of tokens). Must lie in
        ``(x[0], x[-1]]``.
    """
    x, y = _curve(x, y)
    if upto is not None:
        if not x[0] < upto <= x[-1]:
            raise ValueError(f"upto={upto} must lie in (x[0], x[-1]] = ({x[0]}, {x[-1]}]")
        keep = x < upto
        x, y = np.append(x[keep], upto), np.append(y[keep], np.interp(upto, x, y))
    if x.size == 1:
        return float(y[0])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def final_value(y, last: int = 1) -> float:
    """Final accuracy: the mean of the last ``last`` logged values of ``y [m]`` (``last > 1`` smooths eval
    noise)."""
    y = np.asarray(y, np.float64)
    if not 1 <= last <= y.size:
        raise ValueError(f"last={last} must be in [1, {y.size}]")
    return float(np.mean(y[-last:]))


def steps_to(x, y, threshold: float) -> float | None:
    """First ``x`` at which ``y >= threshold``, or ``None`` when the curve never gets there (censored at
    ``x[-1]``). x, y: [m], x strictly increasing."""
    x, y = _curve(x, y)
    hit = np.nonzero(y >= threshold)[0]
    return float(x[hit[0]]) if hit.size else None


def censored_steps_to(curves: Sequence[tuple], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps-to-``threshold`` of several runs in the form ``kaplan_meier`` takes.

    curves: n pairs ``(x [m_i], y [m_i])``.
    Returns ``times [n]`` (steps-to-X, or the last x of a run that never reaches X) and ``events [n]``
    bool (True = reached, False = censored at ``times``).
    """
    times, events = np.empty(len(curves)), np.zeros(len(curves), bool)
    for i, (x, y) in enumerate(curves):
        t = steps_to(x, y, threshold)
        events[i] = t is not None
        times[i] = t if t is not None else float(np.asarray(x)[-1])
    return times, events


# ----------------------------------------------------------------------------------------------------------
# Kaplan-Meier for censored steps-to-X


def _censored(times, events) -> tuple[np.ndarray, np.ndarray]:
    times, events = np.asarray(times, np.float64), np.asarray(events, bool)
    if times.ndim != 1 or times.shape != events.shape or times.size == 0:
        raise ValueError(f"times and events must be 1-D of the same non-zero length, got {times.shape}, "
                         f"{events.shape}")
    if np.any(times < 0) or not np.all(np.isfinite(times)):
        raise ValueError("times must be finite and >= 0")
    return times, events


def kaplan_meier(times, events) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier (product-limit) estimate of the survival function ``S(t) = P(T > t)``, where T is a run's
    steps-to-X (so S(t) is the probability that a run has *not yet* reached X by t).

    times: [n] event time (``events`` True) or censoring time (False) of each run.
    events: [n] bool.
    Returns ``(t [k], s [k])``: the distinct event times in increasing order and S just after each,
        ``s_j = prod_{i <= j} (1 - d_i / r_i)`` with ``d_i`` the runs reaching X at ``t_i`` and ``r_i`` the
        runs at risk at ``t_i`` (``times >= t_i``; a run censored at ``t_i`` counts as at risk there).
        S is a right-continuous step function: 1 before ``t[0]``, ``s[j]`` on ``[t[j], t[j+1])``, and beyond
        the last observed time it is undefined (functions here hold it at ``s[-1]``). k = 0 when no run
        reaches X.
    """
    times, events = _censored(times, events)
    t = np.unique(times[events])
    at_risk = (times[None, :] >= t[:, None]).sum(1)
    reached = ((times[None, :] == t[:, None]) & events[None, :]).sum(1)
    return t, np.cumprod(1.0 - reached / at_risk)


def km_median(times, events) -> float:
    """Kaplan-Meier median steps-to-X: the smallest event time t with ``S(t) <= 0.5``, or ``math.inf`` when S
    never drops to 0.5 (more than half of the runs, by KM weight, never reach X within their budget).

    When S equals 0.5 exactly on an interval (compared with a 1e-9 tolerance, against float round-off in the
    product), this returns its left end (some packages return the midpoint to the next event time
    instead). times, events: [n] as in ``kaplan_meier``.
    """
    t, s = kaplan_meier(times, events)
    below = np.nonzero(s <= 0.5 + 1e-9)[0]  # S is a float product: 0.9 * 7/9 * 6/7 * 5/6 = 0.5 + 1 ulp
    return float(t[below[0]]) if below.size else math.inf


def restricted_mean(times, events, horizon: float) -> float:
    """Restricted mean survival time ``RMST = integral_0^horizon S(t) dt`` with S the Kaplan-Meier estimate.

    It estimates ``E[min(T, horizon)]``, the expected steps-to-X when a run that has not reached X by
    ``horizon`` counts as ``horizon``. In particular, when every censored run is censored at or after
    ``horizon`` (the usual case: all runs last ``horizon`` steps), it equals exactly
    ``mean(min(times, horizon))`` over runs, censored runs counting as ``horizon``. Runs censored earlier
    are handled by KM reweighting rather than counted as their censoring time. Past the last observed
    time S is held at its last value. Smaller is better (reaches X sooner). times, events: [n];
    ``times >= 0``; horizon > 0.
    """
    if horizon <= 0:
        raise ValueError(f"horizon must be > 0, got {horizon}")
    t, s = kaplan_meier(times, events)
    inside = t < horizon
    edges = np.concatenate([[0.0], t[inside], [horizon]])
    levels = np.concatenate([[1.0], s[inside]])  # S on [edges[i], edges[i + 1])
    return float(np.sum(levels * np.diff(edges)))


# ----------------------------------------------------------------------------------------------------------
# Bootstrap


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 (linear interpolation); +inf replicates are allowed: a quantile
    that falls on or interpolates towards an +inf replicate is +inf."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    q = [(1 - level) / 2, (1 + level) / 2]
    r = np.asarray(replicates, np.float64)
    inf = np.isposinf(r)
    if not inf.any():
        lo, hi = np.quantile(r, q, axis=0)
        return lo, hi
    big = np.finfo(np.float64).max
    max_finite = np.max(np.where(inf, -np.inf, r), axis=0)
    out = np.quantile(np.where(inf, big, r), q, axis=0)
    out = np.where(out > max_finite, np.inf, out)
    return out[0], out[1]


def _replicates(strata: list[tuple[np.ndarray, ...]], stat: Callable, n_boot: int, seed: int,
                joint: bool = True) -> np.ndarray:
    """[n_boot, ...] bootstrap replicates of ``mean over strata of stat(*arrays of the stratum)``.

    Each stratum's arrays are resampled along axis 0 independently of other strata; within a stratum the
    arrays share one index draw (``joint``: paired by seed, equal lengths) or each draws its own. Index
    draws are ``rng.integers(0, n, (n_boot, n))`` in stratum (then array) order, so one stratum with one
    array reproduces a plain bootstrap with the same seed.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    per_stratum = []
    for arrays in strata:
        if joint:
            n = len(arrays[0])
            if any(len(a) != n for a in arrays):
                raise ValueError("paired arrays must have the same length (one entry per seed)")
            idx = rng.integers(0, n, (n_boot, n))
            resampled = [a[idx] for a in arrays]
        else:
            resampled = [a[rng.integers(0, len(a), (n_boot, len(a)))] for a in arrays]
        per_stratum.append([stat(*(a[r] for a in resampled)) for r in range(n_boot)])
    return np.mean(np.asarray(per_stratum, np.float64), axis=0)


def _as_array(values) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim == 0 or len(values) == 0:
        raise ValueError("need at least one run")
    return values


def bootstrap_ci(values, stat: Callable = np.mean, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> CI:
    """Percentile-bootstrap CI of ``stat(values)`` over runs.

    values: [n, ...] one entry per run (axis 0 is resampled with replacement).
    stat: maps a [n, ...] array to a float (e.g. ``np.mean``, ``np.median``).
    """
    values = _as_array(values)
    reps = _replicates([(values,)], stat, n_boot, seed)
    lo, hi = _percentile_interval(reps, level)
    return CI(float(stat(values)), float(lo), float(hi))


def paired_bootstrap_diff(a, b, stat: Callable = np.mean, n_boot: int = 2000, level: float = 0.95,
                          seed: int = 0) -> CI:
    """CI of ``stat(a - b)`` (by default the mean paired difference, positive when arm a scores higher),
    resampling seeds jointly: a[i] and b[i] are the two arms' runs with seed i and stay together.

    a, b: [n] per-seed values of the two arms (same seed order). Same draws as ``bootstrap_ci(a - b)``.
    """
    a, b = _as_array(a), _as_array(b)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays need the same shape, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, stat, n_boot, level, seed)


def stratified_bootstrap_ci(strata: Mapping, stat: Callable = np.mean, n_boot: int = 2000,
                            level: float = 0.95, seed: int = 0) -> CI:
    """Stratified-bootstrap CI of the mean over strata (tasks) of a per-stratum statistic.

    strata: {stratum: values [n_s]} for one arm, or {stratum: (a [n_s], b [n_s])} for a paired difference
        (then the per-stratum values are ``a - b``, seeds kept paired). Strata may have different n_s.
    Estimate: ``mean_s stat(values_s)`` (each stratum weighs the same, whatever its number of runs).
    Each replicate resamples runs with replacement *within* each stratum, never across, so every replicate
    keeps every task. With one stratum it reproduces ``bootstrap_ci`` / ``paired_bootstrap_diff`` exactly
    (same seed).
    """
    if not strata:
        raise ValueError("need at least one stratum")
    values = []
    for v in strata.values():
        if isinstance(v, tuple):
            a, b = _as_array(v[0]), _as_array(v[1])
            if a.shape != b.shape:
                raise ValueError(f"paired arrays need the same shape, got {a.shape} and {b.shape}")
            v = a - b
        values.append(_as_array(v))
    reps = _replicates([(v,) for v in values], stat, n_boot, seed)
    lo, hi = _percentile_interval(reps, level)
    return CI(float(np.mean([stat(v) for v in values])), float(lo), float(hi))


# ----------------------------------------------------------------------------------------------------------
# Probability of improvement


def probability_of_improvement(a, b) -> float:
    """``P(X > Y) + P(X = Y) / 2`` for X a run of arm a and Y a run of arm b, over all ``n_a * n_b`` pairs
    (the Mann-Whitney U statistic divided by ``n_a * n_b``). 1: every a-run beats every b-run; 0.5: no
    difference. a: [n_a], b: [n_b]; ignores the seed pairing."""
    a, b = _as_array(a), _as_array(b)
    return float(np.mean(a[:, None] > b[None, :]) + 0.5 * np.mean(a[:, None] == b[None, :]))


def paired_probability_of_improvement(a, b) -> float:
    """Fraction of seeds on which arm a beats arm b, ties counting 1/2: ``mean_i [a_i > b_i] + [a_i = b_i]/2``.
    a, b: [n] paired by seed."""
    a, b = _as_array(a), _as_array(b)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays need the same shape, got {a.shape} and {b.shape}")
    return float(np.mean(a > b) + 0.5 * np.mean(a == b))


def probability_of_improvement_ci(a, b, paired: bool = False, n_boot: int = 2000, level: float = 0.95,
                                  seed: int = 0) -> CI:
    """Probability of improvement of arm a over arm b with a percentile-bootstrap CI.

    a, b: [n] arrays, or {task: [n_task]} dicts with the same keys; the estimate is then the mean over
        tasks of the per-task probability (as in rliable's "probability of improvement", Agarwal et al.
        2021: average over tasks of the Mann-Whitney P(X > Y)).
    paired=False: per task ``probability_of_improvement`` (all pairs of runs); each replicate resamples
        a's runs and b's runs independently within each task (rliable's stratified bootstrap).
    paired=True: per task ``paired_probability_of_improvement`` (a_i vs b_i, same seed); each replicate
        resamples seeds jointly within each task.
    """
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise ValueError("a and b must both be arrays or both be {task: array} dicts")
    if isinstance(a, Mapping):
        if set(a) != set(b) or not a:
            raise ValueError(f"a and b need the same non-empty tasks, got {sorted(a)} and {sorted(b)}")
        strata = [(_as_array(a[k]), _as_array(b[k])) for k in a]
    else:
        strata = [(_as_array(a), _as_array(b))]
    fn = paired_probability_of_improvement if paired else probability_of_improvement
    reps = _replicates(strata, fn, n_boot, seed, joint=paired)
    lo, hi = _percentile_interval(reps, level)
    return CI(float(np.mean([fn(x, y) for x, y in strata])), float(lo), float(hi))


# ----------------------------------------------------------------------------------------------------------
# Censored steps-to-X with a CI


def _km_bootstrap(times, events, stat: Callable, n_boot: int, level: float, seed: int) -> CI:
    times, events = _censored(times, events)
    reps = _replicates([(times, events)], stat, n_boot, seed, joint=True)
    lo, hi = _percentile_interval(reps, level)
    return CI(float(stat(times, events)), float(lo), float(hi))


def km_median_ci(times, events, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> CI:
    """KM median steps-to-X (``km_median``) with a percentile-bootstrap CI: resample runs (time and event
    together) with replacement, recompute the KM median.

    A resample in which more than half of the runs (by KM weight) never reach X has median ``inf``; the
    replicates keep it, so ``hi`` is ``inf`` once more than about ``(1 - level) / 2`` of the resamples are
    undefined ("the data cannot bound the median from above"), ``lo`` is ``inf`` only when about
    ``(1 + level) / 2`` of them are, and the estimate is ``inf`` when the full sample's is. times, events:
    [n] as in ``kaplan_meier``.
    """
    return _km_bootstrap(times, events, km_median, n_boot, level, seed)


def restricted_mean_ci(times, events, horizon: float, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> CI:
    """RMST up to ``horizon`` (``restricted_mean``) with a percentile-bootstrap CI over runs. Always finite
    (unlike the median), so it is the summary to prefer when many runs never reach X."""
    return _km_bootstrap(times, events, lambda t, e: restricted_mean(t, e, horizon), n_boot, level, seed)
