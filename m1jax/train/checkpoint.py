"""Orbax checkpoints: params-only (for conversion and inference) and full training checkpoints.

Both are orbax composite checkpoints sharing two items, so every function reading params accepts
either kind (and a training workdir, meaning its latest step):
  params     the model's nnx.Param values as a nested dict (nnx.State.to_pure_dict form)
  config     the ModelConfig fields (JSON)
A training step directory adds ``opt_state`` (the optax state) and ``meta`` (JSON: step, data position).
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from m1jax.config import ModelConfig
from m1jax.model import MiniMaxM1


def with_sharding(abstract, sharding=None):
    """ShapeDtypeStructs for restoring: keep a leaf's sharding, else ``sharding`` (default: first device)."""
    default = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(x):
        s = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree.map(leaf, abstract)


def resolve_checkpoint(path: str) -> str:
    """A params / training-step checkpoint directory, or a training workdir (or its ``checkpoints``
    directory) meaning its latest complete step."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, "params")):
        return path
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    if os.path.isdir(root):
        steps = ocp.utils.checkpoint_steps(root)
        if steps:
            return os.path.join(root, str(max(steps)))
    raise FileNotFoundError(f"no m1jax checkpoint at {path} (expected a 'params' item or a workdir with steps)")


def save_params(path: str, model: MiniMaxM1 | dict, config: ModelConfig | None = None, *,
                force: bool = False) -> str:
    """Write a params-only checkpoint of ``model`` (or of a params pure dict with its ``config``).

    Returns the absolute path. ``force`` overwrites an existing checkpoint there.
    """
    if isinstance(model, MiniMaxM1):
        config = config or model.config
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    else:
        params = model
        if config is None:
            raise ValueError("save_params of a params dict needs its ModelConfig")
    path = os.path.abspath(os.path.expanduser(path))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 config=ocp.args.JsonSave(config.to_dict())), force=force)
    return path


def load_config(path: str) -> ModelConfig:
    """The ModelConfig stored in a params or training checkpoint (or a workdir's latest)."""
    path = resolve_checkpoint(path)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(path, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ModelConfig.from_dict(restored["config"])


def check_params_fit(path: str, abstract_params, what: str = "init_from") -> None:
    """Raise a one-line ValueError when the checkpoint at ``path`` (its stored ModelConfig) holds parameters of
    other shapes than ``abstract_params`` (checked before any work, instead of orbax's error mid-restore)."""
    try:
        stored = load_config(path)
    except FileNotFoundError as e:
        raise ValueError(f"{what}={path}: {e}") from None
    have = nnx.to_pure_dict(nnx.split(nnx.eval_shape(lambda: MiniMaxM1(stored, rngs=nnx.Rngs(0))), nnx.Param)[1])
    have = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(have)}
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(abstract_params)}
    diffs = [f"{k}: {have.get(k, 'absent')} there, {v} here" for k, v in want.items() if have.get(k) != v]
    if diffs:
        raise ValueError(f"{what}={path} holds a model of another shape ({len(diffs)} of {len(want)} parameters "
                         f"differ, e.g. {diffs[0]}): start from a checkpoint of this config's shape, or set "
                         "--config.model.* to the checkpoint's")


def restore_params_dict(path: str, abstract_params, *, sharding=None) -> dict:
    """The ``params`` item restored onto ``abstract_params`` (pure dict of ShapeDtypeStruct; dtypes cast)."""
    path = resolve_checkpoint(path)
    target = with_sharding(abstract_params, sharding)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        return ckptr.restore(path, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]


def restore_params(path: str, config: ModelConfig | None = None, *, sharding=None) -> MiniMaxM1:
    """A MiniMaxM1 with params from a params or training checkpoint (or a workdir's latest).

    ``config`` defaults to the one stored in the checkpoint; pass one to change e.g. ``dtype`` or
    ``param_dtype`` (stored values are cast). ``sharding`` places every array (default: first device).
    """
    config = config or load_config(path)
    abstract = nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract, nnx.Param)
    params = restore_params_dict(path, nnx.to_pure_dict(abstract_state), sharding=sharding)
    return nnx.merge(graphdef, params)


class TrainCheckpointer:
    """Training checkpoints under ``directory``: async saves, keep-last-``keep``, latest complete step.

    A step is visible only once fully written (orbax finalizes it atomically), so a run killed mid-save
    resumes from the previous step.
    """

    def __init__(self, directory: str, *, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True,
                                               enable_async_checkpointing=bool(async_save))
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, data_state: dict, config: ModelConfig) -> None:
        """Start saving ``state`` (params, opt_state) and the data position as step ``step``."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            opt_state=ocp.args.StandardSave(state["opt_state"]),
            meta=ocp.args.JsonSave({"step": int(step), "data": dict(data_state)}),
            config=ocp.args.JsonSave(config.to_dict()),
        )
        self.manager.save(int(step), args=args, force=True)

    def restore(self, step: int, abstract_state: dict, *, sharding=None) -> tuple[dict, dict]:
        """(state, data position) of ``step``, restored onto ``abstract_state``'s shapes, dtypes and
        shardings (leaves without one go to ``sharding``, default the first device)."""
        target = with_sharding({k: abstract_state[k] for k in ("params", "opt_state")}, sharding)
        out = self.manager.restore(int(step), args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target["params"]),
            opt_state=ocp.args.StandardRestore(target["opt_state"]),
            meta=ocp.args.JsonRestore(),
        ))
        meta = out["meta"]
        if int(meta["step"]) != int(step):
            raise ValueError(f"checkpoint {step} records step {meta['step']}")
        step_sharding = getattr(abstract_state["step"], "sharding", None) or sharding
        step_arr = jax.device_put(jax.numpy.asarray(int(step), jax.numpy.int32),
                                  step_sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        return {"params": out["params"], "opt_state": out["opt_state"], "step": step_arr}, meta["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
