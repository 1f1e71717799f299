"""THE logical-axis rules table and the functions that apply it (parameters and activations).

Every parameter carries logical axis names (``m1jax.model.layers.param``); activations are named
at the call site (``constrain(x, ("batch", "seq", "hidden"))``). ``LOGICAL_RULES`` maps each name to
mesh axes; nothing else in m1jax names a mesh axis.

Placement policy of ``logical_to_spec`` (per tensor dim, the rule's mesh axes in order):
  * an axis that is not in the mesh, has size 1, or is already used by an earlier dim is skipped;
  * an axis whose size (times the axes already kept for this dim) does not divide the dim's number
    of units is skipped, so that dim is replicated over it (e.g. 8 kv heads on a 16-way ``tensor``
    axis, or a batch of 4 on 8 data devices: correct, just not split). Later axes of the rule are
    still tried. A dim's units are its size unless ``units`` says otherwise: flattened head dims
    (H*D, Hkv*D, 3*H*D) count heads, so a shard always holds whole heads.
Skipped axes never change results, only where data lives (and how much is duplicated).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, PartitionSpec

LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameter dims
    "vocab": "tensor",          # embedding rows, LM-head columns
    "embed": "fsdp",            # the model dim of every weight: the FSDP split
    "heads": "tensor",          # H*D of q / gate / out / lightning norm (whole heads per shard)
    "kv_heads": "tensor",       # Hkv*D of k / v (replicated when tensor > Hkv)
    "qkv": "tensor",            # lightning's fused 3*H*D, per-head interleaved: whole heads per shard
    "mlp": "tensor",            # expert FFN hidden dim
    "expert": "expert",         # the stacked expert dim
    "expert_logits": None,      # router output dim (E is small)
    # activation dims
    "batch": ("data", "fsdp", "expert"),
    "seq": "context",
    "hidden": None,             # the residual stream's model dim
}


def _targets(rule) -> tuple[str, ...]:
    if rule is None:
        return ()
    return (rule,) if isinstance(rule, str) else tuple(rule)


def head_units(config) -> dict[str, int]:
    """Indivisible units of the flattened head dims of a ModelConfig (see ``logical_to_spec``)."""
    return {"heads": config.num_attention_heads, "qkv": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads}


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None, mesh=None,
                    rules: dict | None = None, units: dict[str, int] | None = None) -> PartitionSpec:
    """Logical dim names -> PartitionSpec, following the placement policy in the module docstring.

    ``mesh`` (a Mesh or AbstractMesh) and ``shape`` enable the size checks; without them every
    rule's axes are kept (only duplicates are dropped). ``None`` names a replicated dim.
    ``units`` {logical name: count} replaces the dim size in the divisibility test (``head_units``).
    """
    rules = LOGICAL_RULES if rules is None else rules
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    sizes = None if mesh is None else dict(mesh.shape)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        kept, prod = [], 1
        for a in _targets(rules[name]):
            if a in used:
                continue
            if sizes is not None:
                if sizes.get(a, 1) == 1:
                    continue
                n = (units or {}).get(name, None if shape is None else shape[i])
                if n is not None and n % (prod * sizes[a]):
                    continue
                prod *= sizes[a]
            kept.append(a)
            used.add(a)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def mesh_axes(spec_entry) -> tuple[str, ...]:
    """One PartitionSpec entry (None, an axis, or a tuple of axes) as a tuple of axis names."""
    return _targets(spec_entry)


def active_mesh():
    """The ambient mesh set by ``m1jax.sharding.use_mesh`` / ``jax.set_mesh`` (an AbstractMesh inside
    jit), or None when there is none or every axis is already manual (inside ``shard_map``)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(t == AxisType.Manual for t in mesh.axis_types):
        return None
    return mesh


def constrain(x, logical_axes: Sequence[str | None], rules: dict | None = None):
    """Place activation ``x`` per its logical dim names on the ambient mesh; a no-op without one."""
    mesh = active_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh, rules)
    manual = {a for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True) if t == AxisType.Manual}
    if manual:  # partially manual (nested shard_map): leave the manual axes to it
        spec = PartitionSpec(*(tuple(a for a in mesh_axes(e) if a not in manual) or None for e in spec))
    return jax.lax.with_sharding_constraint(x, spec)
