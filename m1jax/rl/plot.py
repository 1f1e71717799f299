"""Curves of an RL run (reward per step, held-out accuracy) as a PNG, from its metrics.jsonl records."""

from __future__ import annotations

import numpy as np


def plot_curves(rows: list[dict], path: str, *, title: str = "") -> str:
    """Two panels: training reward (per step and a 10-step moving mean) and held-out greedy accuracy
    (and mean@k when logged). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(10, 3.6))
    trained = [r for r in rows if "reward" in r]
    if trained:
        steps = np.array([r["step"] for r in trained])
        reward = np.array([r["reward"] for r in trained], float)
        ax_r.plot(steps, reward, color="0.7", lw=1, label="per step")
        w = min(10, len(reward))
        ax_r.plot(steps[w - 1:], np.convolve(reward, np.ones(w) / w, "valid"), color="C0", lw=2,
                  label=f"{w}-step mean")
        ax_r.legend(loc="upper left")
    ax_r.set(xlabel="RL step", ylabel="reward (verifier)", title="training reward")
    evals = [r for r in rows if "eval/accuracy" in r]
    if evals:
        ax_a.plot([r["step"] for r in evals], [r["eval/accuracy"] for r in evals], "o-", color="C1",
                  label="greedy exact match")
        mean_keys = sorted({k for r in evals for k in r if k.startswith("eval/mean@")})
        for k in mean_keys:
            pts = [(r["step"], r[k]) for r in evals if k in r]
            ax_a.plot(*zip(*pts, strict=True), "s--", color="C2", label=k.removeprefix("eval/"))
        ax_a.legend(loc="upper left")
        top = max(max(r["eval/accuracy"] for r in evals), max((r[k] for r in evals for k in mean_keys if k in r),
                                                              default=0))
        ax_a.set_ylim(0, max(0.05, 1.35 * top))
    ax_a.set(xlabel="RL step", ylabel="held-out accuracy", title="held-out accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
