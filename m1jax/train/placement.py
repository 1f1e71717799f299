"""Where the train state and the batches live on a device mesh (shardings from m1jax.sharding's rules).

Params follow the ONE logical-axis rules table (FSDP over ``fsdp``, heads / expert FFN over ``tensor``,
experts over ``expert``); Adam's moments follow their params; step counts are replicated. Batches
[b, n] split b over the data-parallel axes and n over ``context``. A one-device mesh is plain
single-device training. With several processes (hosts) each one makes only the batch rows its own
devices hold (``process_rows``) and ``global_batch`` assembles the global arrays from them.
"""

from __future__ import annotations

import jax
import numpy as np
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


def process_rows(sharding: NamedSharding, shape) -> list[int]:
    """The rows (dim 0) of a global array of ``shape`` that this process's devices hold, in order."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
        rows.update(range(*index[0].indices(shape[0])))
    return sorted(rows)


def global_batch(local: dict, sharding: NamedSharding, batch_size: int, rows) -> dict:
    """Global [batch_size, ...] jax.Arrays from this process's rows ``rows`` (``local`` arrays [len(rows), ...]).

    Each device's shard is cut from the process-local rows (``jax.make_array_from_callback``): no
    process needs the rows of another.
    """
    rows = np.asarray(rows)

    def assemble(x):
        shape = (batch_size, *x.shape[1:])

        def shard(index):
            start, stop, _ = index[0].indices(batch_size)
            at = int(np.searchsorted(rows, start))
            if not (stop - start <= len(rows) - at and (rows[at:at + stop - start] == np.arange(start, stop)).all()):
                raise ValueError(f"rows {start}..{stop - 1} of the batch are not all among this process's rows")
            return x[(slice(at, at + stop - start), *index[1:])]

        return jax.make_array_from_callback(shape, sharding, shard)

    return {k: assemble(v) for k, v in local.items()}


def gather_data_state(state: dict, batch_size: int) -> dict:
    """The data position of every batch row (a DataPipeline ``state``), merged over all processes (each
    knows its own rows'); a collective when there are several processes, so call it on all of them."""
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils

    table = np.full((batch_size, 2), -1, np.int32)
    for row, doc, offset in state["rows"]:
        table[row] = doc, offset
    table = np.asarray(multihost_utils.process_allgather(table)).max(0)  # [processes, rows, 2] -> rows known
    if (table < 0).any():
        raise ValueError(f"no process holds batch rows {np.nonzero(table[:, 0] < 0)[0].tolist()}")
    return {"rows": [[r, int(doc), int(offset)] for r, (doc, offset) in enumerate(table)]}
