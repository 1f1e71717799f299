"""m1jax.sharding: mesh config, the rules table's placement policy, and (in subprocesses with fake CPU
devices) sharded forward / loss / gradients / checkpoints / context parallelism against one device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from m1jax import MiniMaxM1, ModelConfig
from m1jax import sharding as sh
from m1jax.sharding.mesh import ENV_VARS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def abstract_mesh(**sizes):
    full = {a: sizes.get(a, 1) for a in sh.AXES}
    return AbstractMesh(tuple(full.values()), tuple(full), axis_types=(AxisType.Auto,) * len(full))


def test_mesh_config_resolves_the_free_axis():
    assert sh.MeshConfig(tensor=4).resolve(16) == dict(data=1, fsdp=4, expert=1, context=1, tensor=4)
    assert sh.MeshConfig(data=2, fsdp=1, expert=-1).resolve(8)["expert"] == 4
    with pytest.raises(ValueError, match="at most one axis"):
        sh.MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="tensor"):
        sh.MeshConfig(tensor=0)
    with pytest.raises(ValueError, match="do not divide"):
        sh.MeshConfig(tensor=3).resolve(8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        sh.MeshConfig(fsdp=2, tensor=3).resolve(8)
    mesh = sh.make_mesh(sh.MeshConfig())  # one CPU device here
    assert mesh.axis_names == sh.AXES and mesh.devices.size == 1


def test_initialize_distributed_is_a_noop_for_one_process(monkeypatch):
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    assert sh.initialize_distributed() is False
    assert sh.initialize_distributed(num_processes=1) is False
    with pytest.raises(ValueError, match="process_id"):
        sh.initialize_distributed(coordinator_address="localhost:1234", num_processes=2, process_id=2)


def test_logical_to_spec_policy():
    mesh = abstract_mesh(data=2, fsdp=4, expert=2, tensor=8)
    # batch over (data, fsdp, expert) as far as the size divides; later axes are still tried.
    assert sh.logical_to_spec(("batch", "seq", "hidden"), (16, 5, 64), mesh) == P(("data", "fsdp", "expert"), None,
                                                                                None)
    assert sh.logical_to_spec(("batch",), (4,), mesh) == P(("data", "expert"))  # 4 % 8: fsdp skipped
    assert sh.logical_to_spec(("batch",), (6,), mesh) == P("data")
    assert sh.logical_to_spec(("batch",), (3,), mesh) == P(None)
    # Size-1 and missing axes vanish; an axis is used once per spec.
    assert sh.logical_to_spec(("seq", "mlp"), (128, 96), mesh) == P(None, "tensor")
    assert sh.logical_to_spec(("mlp", "heads"), (64, 64), mesh) == P("tensor", None)
    # Head dims count heads: 8 kv heads of 128 split 8 ways, 4 kv heads are replicated (not split mid-head).
    units = {"kv_heads": 4}
    assert sh.logical_to_spec(("embed", "kv_heads"), (64, 512), mesh, units=units) == P("fsdp", None)
    assert sh.logical_to_spec(("embed", "kv_heads"), (64, 1024), mesh, units={"kv_heads": 8}) == P("fsdp", "tensor")
    with pytest.raises(KeyError, match="no rule"):
        sh.logical_to_spec(("nonsense",), (4,), mesh)
    with pytest.raises(ValueError, match="do not match"):
        sh.logical_to_spec(("batch",), (4, 4), mesh)


def test_param_specs_of_the_model():
    config = ModelConfig.tiny()  # 4 heads (2 kv), experts 4, hidden 64, ffn 96
    model = nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0)))
    specs = sh.param_specs(model, abstract_mesh(fsdp=2, expert=4, tensor=4))
    lightning, softmax = specs["layers"][0], specs["layers"][1]
    assert lightning["self_attn"]["qkv_proj"] == P("fsdp", "tensor")  # 4 | 4 heads: one whole head per shard
    assert lightning["self_attn"]["norm"]["weight"] == P("tensor")
    assert softmax["self_attn"]["k_proj"] == P("fsdp", None)  # 2 kv heads on 4 shards: replicated
    assert softmax["self_attn"]["o_proj"] == P("tensor", "fsdp")
    assert lightning["block_sparse_moe"]["w1"] == P("expert", "fsdp", "tensor")
    assert lightning["block_sparse_moe"]["w2"] == P("expert", "tensor", "fsdp")
    assert lightning["block_sparse_moe"]["gate"] == P("fsdp", None)
    assert specs["embed_tokens"] == P("tensor", "fsdp") and specs["lm_head"] == P("fsdp", "tensor")
    # 8-way tensor does not divide 4 heads: replicated rather than split mid-head.
    specs8 = sh.param_specs(model, abstract_mesh(tensor=8))
    assert specs8["layers"][0]["self_attn"]["qkv_proj"] == P(None, None)
    assert specs8["layers"][0]["block_sparse_moe"]["w1"] == P(None, None, "tensor")  # 96 % 8 == 0


def test_constrain_without_a_mesh_is_the_identity():
    x = np.ones((2, 3))
    assert sh.constrain(x, ("batch", "hidden")) is x
    assert sh.active_mesh() is None


def _run(args, devices):
    flags = (f"--xla_force_host_platform_device_count={devices} "
             # CPU codegen at -O0: compiles several times faster; these checks are about partitioning.
             "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "tests.sharded_checks", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.stdout[-3000:], proc.stderr[-3000:])
    return lines


def test_sharded_model_matches_one_device(tmp_path):
    """Logits, loss and gradients on five meshes (data; fsdp x tensor; expert x data; data x fsdp x expert
    x tensor; context x tensor x expert) equal one device, the expert meshes dispatching by all-to-all;
    save on one mesh, restore on another."""
    lines = _run(["model", str(tmp_path / "ckpt")], 16)
    assert {x["mesh"] for x in lines if "mesh" in x} == {"data", "fsdp_tensor", "expert_data", "all4", "context"}
    assert any(x.get("checkpoint") for x in lines)


def test_expert_parallel_moe_all_to_all():
    """The expert-parallel MoE (all-to-all dispatch) equals the dense path, outputs and gradients, on five
    meshes with skewed routing and exact router ties, and with every pair sent to one device; the CPU
    exchange matches ragged_all_to_all's semantics; the ragged (GPU/TPU) exchange lowers for CUDA."""
    lines = _run(["moe"], 8)
    assert sum("moe_ep" in x for x in lines) == 5 and any("all_pairs_to_one_device" in x for x in lines)


def test_context_parallel_and_tensor_parallel_layers():
    """Context-parallel lightning attention (4 devices) is exact incl. gradients, packed segments and an
    initial state; qkv split over tensor keeps whole heads (no collectives); the H*D norm all-reduces; the
    softmax layer's segment kernel under shard_map equals one device (three meshes)."""
    lines = _run(["layers"], 8)
    assert sum("context_parallel" in x for x in lines) == 4
    assert sum("segment_attention" in x for x in lines) == 3


def test_sharded_rl_update_matches_one_device():
    """One CISPO update (2 micro-batches) and the learner's log-probs on an 8-device data x fsdp x tensor mesh
    equal one device (params and Adam state placed by the rules table)."""
    lines = _run(["rl"], 8)
    assert any("rl_update" in x and x["sharded_param_leaves"] > 0 for x in lines)
