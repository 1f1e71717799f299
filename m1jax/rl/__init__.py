"""Reinforcement learning for MiniMax-M1-style models: CISPO and its baselines as pure loss functions."""

from m1jax.rl.losses import (
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

__all__ = [
    "LOSSES",
    "cispo_loss",
    "dapo_loss",
    "dynamic_sampling_mask",
    "get_loss",
    "grpo_loss",
    "group_advantages",
    "masked_mean",
    "overlong_penalty",
    "token_entropy",
]
