"""Flax NNX modules of MiniMax-M1."""

from m1jax.model.cache import Cache, init_cache
from m1jax.model.moe import RouterStats
from m1jax.model.transformer import MiniMaxM1, ModelOutput

__all__ = ["Cache", "MiniMaxM1", "ModelOutput", "RouterStats", "init_cache"]
