"""Reinforcement learning for MiniMax-M1-style models: CISPO and its baselines as pure loss functions."""

from m1jax.rl.losses import (
    cispo_loss,
    dapo_loss,
    dynamic_sampling_mask,
    grpo_loss,
    group_advantages,
    overlong_penalty,
)

__all__ = ["cispo_loss", "dapo_loss", "dynamic_sampling_mask", "grpo_loss", "group_advantages", "overlong_penalty"]
