"""Meshes and the ONE logical-axis rules table (see rules.py for the placement policy)."""

from m1jax.sharding.mesh import AXES, MeshConfig, initialize_distributed, make_mesh, use_mesh
from m1jax.sharding.params import (
    abstract_params, cache_shardings, param_sharding, param_shardings, param_specs, shard_model, state_shardings,
)
from m1jax.sharding.rules import LOGICAL_RULES, active_mesh, constrain, head_units, logical_to_spec

__all__ = [
    "AXES", "LOGICAL_RULES", "MeshConfig", "abstract_params", "active_mesh", "cache_shardings", "constrain",
    "head_units", "initialize_distributed", "logical_to_spec", "make_mesh", "param_sharding", "param_shardings",
    "param_specs", "shard_model", "state_shardings", "use_mesh",
]
