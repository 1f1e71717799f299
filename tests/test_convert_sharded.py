"""load_hf onto a mesh: each parameter lands in its sharding and each device reads only its slices."""

import os
import subprocess
import sys

SCRIPT = r"""
import os, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from m1jax.convert import hf
from m1jax.convert.hf import CheckpointReader, load_params
from m1jax.config import ModelConfig
from tests.hf_utils import SPEC_TINY, make_torch_model

path = sys.argv[1]
make_torch_model(0, **SPEC_TINY).save_pretrained(path)
assert jax.device_count() == 4
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("expert", "tensor"))
RULES = {"expert": "expert", "mlp": "tensor", "heads": "tensor"}

def sharding(name, axes, shape):
    return NamedSharding(mesh, P(*(RULES.get(a) for a in axes)))

class CountingReader(CheckpointReader):
    reads = {}
    def read(self, key):
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().read(key)

config = ModelConfig.from_hf(path)
source = CountingReader(path)
sharded = load_params(source, config, sharding=sharding)
plain = hf.load_hf(path)
w1 = sharded.layers[0].block_sparse_moe.w1[...]
assert w1.sharding.spec == P("expert", None, "tensor"), w1.sharding
assert len({d for d in w1.sharding.device_set}) == 4
for a, b in zip(jax.tree.leaves(hf.nnx.state(sharded)), jax.tree.leaves(hf.nnx.state(plain))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
# Experts 0-1 live on mesh row 0 and 2-3 on row 1; each expert tensor is read by the 2 devices of
# its row only (one per tensor shard), never by all 4.
e_reads = [source.reads[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"] for e in range(4)]
assert e_reads == [2, 2, 2, 2], e_reads
print("ok")
"""


def test_load_onto_a_mesh(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "hf")], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
