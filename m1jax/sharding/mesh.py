"""Device meshes: ``MeshConfig`` (five named axes), ``make_mesh``, multi-host start-up.

Mesh axes, outermost first (the innermost axes get the closest devices, e.g. one host's NVLink):
  data     pure data parallelism: parameters replicated, batch split
  fsdp     data parallelism with parameters (and optimizer state) split along their ``embed`` dim
  expert   MoE experts split; acts as data parallelism for every non-expert computation
  context  the sequence split (context parallelism: lightning state scan, softmax K/V all-gather)
  tensor   Megatron-style split of heads and of the expert FFN's hidden dim
Which tensor dims go on which axis is decided in ONE place, ``m1jax.sharding.rules.LOGICAL_RULES``.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "expert", "context", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Size of each mesh axis; 1 switches an axis off, -1 (at most one axis) takes the remaining devices."""

    data: int = 1
    fsdp: int = -1
    expert: int = 1
    context: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.as_dict()
        for name, v in sizes.items():
            if not (isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1)):
                raise ValueError(f"MeshConfig.{name}={v!r}: must be a positive int or -1 (the remaining devices)")
        if sum(v == -1 for v in sizes.values()) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1, got {sizes}")

    def as_dict(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in AXES}

    def resolve(self, num_devices: int) -> dict[str, int]:
        """Axis sizes with -1 filled in; their product must equal ``num_devices``."""
        sizes = self.as_dict()
        fixed = math.prod(v for v in sizes.values() if v != -1)
        free = [a for a, v in sizes.items() if v == -1]
        if free:
            if num_devices % fixed:
                raise ValueError(f"MeshConfig {sizes}: the fixed axes ({fixed} devices) do not divide "
                                 f"{num_devices} devices")
            sizes[free[0]] = num_devices // fixed
        if math.prod(sizes.values()) != num_devices:
            raise ValueError(f"MeshConfig {sizes} needs {math.prod(sizes.values())} devices, have {num_devices}")
        return sizes


def make_mesh(config: MeshConfig | dict | None = None, devices=None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all) with the five axes of ``AXES`` (Auto sharding mode).

    ``config`` may be a MeshConfig, a dict of axis sizes, or None (everything on ``fsdp``).
    """
    if config is None:
        config = MeshConfig()
    elif isinstance(config, dict):
        config = MeshConfig(**config)
    devices = list(jax.devices() if devices is None else devices)
    sizes = config.resolve(len(devices))
    shape = tuple(sizes[a] for a in AXES)
    auto = (AxisType.Auto,) * len(AXES)
    if len(devices) == jax.device_count():
        # Topology-aware placement (on TPU / GPU it keeps inner axes on close devices).
        return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def use_mesh(mesh: Mesh):
    """Context manager making ``mesh`` the ambient mesh (``jax.set_mesh``).

    Inside it, ``m1jax.sharding.constrain`` places activations and the model's parallel paths
    (expert-parallel MoE, context-parallel attention) find their mesh. Trace jitted functions inside it.
    """
    return jax.set_mesh(mesh)


ENV_VARS = {"coordinator_address": "M1JAX_COORDINATOR", "num_processes": "M1JAX_NUM_PROCESSES",
            "process_id": "M1JAX_PROCESS_ID"}


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Start multi-process JAX (one process per host) before any other JAX call; returns whether it did.

    Each value comes from the argument (e.g. a CLI flag), else the environment variable in ``ENV_VARS``
    (M1JAX_COORDINATOR=host:port, M1JAX_NUM_PROCESSES, M1JAX_PROCESS_ID). A single process
    (num_processes unset or 1, no coordinator) is a no-op. Clusters jax detects itself (SLURM, TPU pods)
    work with ``M1JAX_NUM_PROCESSES`` > 1 and no coordinator.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_VARS["coordinator_address"]) or None
    if num_processes is None and os.environ.get(ENV_VARS["num_processes"]):
        num_processes = int(os.environ[ENV_VARS["num_processes"]])
    if process_id is None and os.environ.get(ENV_VARS["process_id"]):
        process_id = int(os.environ[ENV_VARS["process_id"]])
    if coordinator_address is None and (num_processes is None or num_processes == 1):
        return False
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes}: must be >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id}: must be in [0, num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True
