"""m1jax: MiniMax-M1 in JAX / Flax NNX."""

from m1jax.config import ModelConfig
from m1jax.model import Cache, MiniMaxM1, ModelOutput

__all__ = ["Cache", "MiniMaxM1", "ModelConfig", "ModelOutput"]
