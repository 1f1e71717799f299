"""Supervised (pre)training: config checks, optimizer, loss, jitted step, orbax checkpoints, metrics, loop."""

from m1jax.train.checkpoint import TrainCheckpointer, load_config, restore_params, restore_params_dict, save_params
from m1jax.train.config import default_config, validate
from m1jax.train.loop import NonFiniteError, train

__all__ = [
    "NonFiniteError", "TrainCheckpointer", "default_config", "load_config", "restore_params", "restore_params_dict",
    "save_params", "train", "validate",
]
