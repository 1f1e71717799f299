"""Supervised (pre)training: config checks, optimizer, loss, jitted step, orbax checkpoints, metrics, loop.

The public names below are imported on first use, so that the pieces without ml-collections (``m1jax.train.loss``,
``m1jax.train.step``) import where it is absent (the GPU image), e.g. for the benchmarks.
"""

import importlib

_EXPORTS = {
    "TrainCheckpointer": "checkpoint", "load_config": "checkpoint", "restore_params": "checkpoint",
    "restore_params_dict": "checkpoint", "save_params": "checkpoint", "default_config": "config",
    "validate": "config", "NonFiniteError": "loop", "train": "loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"m1jax.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'm1jax.train' has no attribute {name!r}")
