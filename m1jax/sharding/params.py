"""Parameter placement from the rules table: specs, shardings, in-place sharding, loader callback."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from m1jax.sharding.rules import head_units, logical_to_spec


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _axes(var: nnx.Variable) -> tuple:
    axes = var.get_metadata().get("logical_axes")
    if axes is None:
        raise ValueError(f"parameter of shape {var.get_value().shape} has no logical_axes metadata")
    return tuple(axes)


def _units(model):
    config = getattr(model, "config", None)
    return None if config is None else head_units(config)


def param_specs(model: nnx.Module, mesh=None, rules: dict | None = None) -> dict:
    """PartitionSpec of every nnx.Param of ``model`` (real or from nnx.eval_shape), as a pure dict
    shaped like ``nnx.state(model, nnx.Param).to_pure_dict()`` (the train state's params)."""
    state, units = nnx.state(model, nnx.Param), _units(model)
    specs = jax.tree.map(lambda v: v.replace(logical_to_spec(_axes(v), v.get_value().shape, mesh, rules, units)),
                         state, is_leaf=_is_var)
    return nnx.to_pure_dict(specs)


def param_shardings(model: nnx.Module, mesh: Mesh, rules: dict | None = None) -> dict:
    """NamedSharding of every nnx.Param (pure dict, as ``param_specs``): jit in/out shardings."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(model, mesh, rules),
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def shard_model(model: nnx.Module, mesh: Mesh, rules: dict | None = None) -> nnx.Module:
    """Move every nnx.Param of ``model`` to its rules-table sharding on ``mesh`` (in place); returns model."""
    units = _units(model)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            spec = logical_to_spec(_axes(var), var.get_value().shape, mesh, rules, units)
            var.set_value(jax.device_put(var.get_value(), NamedSharding(mesh, spec)))
    return model


def param_sharding(mesh: Mesh, config=None, rules: dict | None = None) -> Callable:
    """``callable(param_path, logical_axes, shape) -> NamedSharding``, the ``sharding=`` argument of
    ``m1jax.convert.load_hf`` / ``load_params`` (each device then reads only its slices).

    Pass the ModelConfig so head dims split by whole heads (as ``param_shardings`` does); without it
    the flattened head dims are split by their size.
    """
    units = None if config is None else head_units(config)

    def sharding(param_path: str, logical_axes, shape) -> NamedSharding:
        del param_path
        return NamedSharding(mesh, logical_to_spec(tuple(logical_axes), tuple(shape), mesh, rules, units))

    return sharding


def abstract_params(model: nnx.Module, mesh: Mesh, rules: dict | None = None) -> dict:
    """ShapeDtypeStructs of the params (pure dict) carrying their shardings on ``mesh``: the target
    for restoring a checkpoint onto ``mesh`` and the argument specs of an ahead-of-time compile.
    ``model`` may be abstract (``nnx.eval_shape``)."""
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                        param_shardings(model, mesh, rules))


def state_shardings(tree, params_shardings: dict, mesh: Mesh):
    """Shardings for a pytree holding params-shaped subtrees (an optax state: Adam's mu / nu, ...):
    each subtree with the params' structure gets ``params_shardings``, every other leaf (step counts,
    scalars) is replicated. ``tree`` may be abstract (``jax.eval_shape``)."""
    structure = jax.tree.structure(params_shardings)
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())

    def like(node):
        return jax.tree.structure(node) == structure

    return jax.tree.map(lambda node: params_shardings if like(node) else replicated, tree, is_leaf=like)


def cache_shardings(cache, mesh: Mesh, rules: dict | None = None):
    """Shardings of a decoding ``m1jax.Cache`` (same structure): KV caches [b, S, Hkv, D] split by batch
    and kv heads (the cached sequence stays whole), lightning states [b, H, D, D] by batch and heads."""
    def spec(axes, x):
        return NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules))

    layers = tuple(
        tuple(spec(("batch", None, "kv_heads", None), a) for a in entry) if isinstance(entry, tuple)
        else spec(("batch", "heads", None, None), entry)
        for entry in cache.layers
    )
    return cache.replace(index=NamedSharding(mesh, jax.sharding.PartitionSpec()), layers=layers)
