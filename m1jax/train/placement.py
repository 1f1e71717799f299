"""Where the train state and the batches live on a device mesh (shardings from m1jax.sharding's rules).

Params follow the ONE logical-axis rules table (FSDP over ``fsdp``, heads / expert FFN over ``tensor``,
experts over ``expert``); Adam's moments follow their params; step counts are replicated. Batches
[b, n] split b over the data-parallel axes and n over ``context``. A one-device mesh is plain
single-device training.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from m1jax.sharding import logical_to_spec, make_mesh, param_shardings


def train_mesh(mesh_cfg) -> Mesh:
    """The mesh of ``config.mesh`` (axis sizes; -1 = the remaining devices) over all devices."""
    return make_mesh(dict(mesh_cfg))


def train_state_shardings(abstract_model, abstract_state: dict, mesh: Mesh) -> dict:
    """NamedShardings shaped like the train state {"params", "opt_state", "step"}."""
    params = param_shardings(abstract_model, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    structure = jax.tree.structure(params)

    def like_params(node):
        return jax.tree.structure(node) == structure

    # every params-shaped subtree of the optax state (Adam's mu, nu) is placed like the params
    opt_state = jax.tree.map(lambda node: params if like_params(node) else replicated, abstract_state["opt_state"],
                             is_leaf=like_params)
    return {"params": params, "opt_state": opt_state, "step": replicated}


def batch_sharding(mesh: Mesh, batch_size: int, seq_len: int) -> NamedSharding:
    """Sharding of every [batch, seq] array of a packed batch."""
    return NamedSharding(mesh, logical_to_spec(("batch", "seq"), (batch_size, seq_len), mesh))


def with_shardings(abstract, shardings):
    """ShapeDtypeStructs of ``abstract`` carrying ``shardings`` (restore / compile targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
