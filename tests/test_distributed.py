"""Multi-process JAX: initialize_distributed from the CLI flags' values, two CPU processes on localhost; each
process loads only its own rows of the global batch."""

import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import sys, jax, jax.numpy as jnp
from jax.experimental import multihost_utils
from m1jax.sharding import initialize_distributed
jax.config.update("jax_cpu_collectives_implementation", "gloo")
assert initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
gathered = multihost_utils.process_allgather(jnp.array([10 + jax.process_index()]))
print("process", jax.process_index(), "of", jax.process_count(), "devices", jax.device_count(),
      gathered.ravel().tolist())
"""


DATA_WORKER = r"""
import json, sys, jax, numpy as np
from jax.experimental import multihost_utils
from m1jax.sharding import MeshConfig, initialize_distributed, make_mesh
from m1jax.data import ByteTokenizer, DataPipeline, TaskSource
from m1jax.train.placement import batch_sharding, gather_data_state, global_batch, process_rows
jax.config.update("jax_cpu_collectives_implementation", "gloo")
assert initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))

class Recorded(TaskSource):  # notes the documents this process reads
    read = set()
    def __getitem__(self, i):
        self.read.add(int(i))
        return super().__getitem__(i)

B, T = 6, 24
src = Recorded("copy,add,reverse", ByteTokenizer(), seed=3)
shard = batch_sharding(make_mesh(MeshConfig(data=2, fsdp=1)), B, T)
rows = process_rows(shard, (B, T))
pipe = DataPipeline(src, batch_size=B, seq_len=T, prefetch=2, rows=rows)
batches = [global_batch(next(pipe), shard, B, rows) for _ in range(2)]
state = gather_data_state(pipe.state, B)  # what the checkpoint records; resume from it for the 3rd batch
pipe.close()
resumed = DataPipeline(src, batch_size=B, seq_len=T, prefetch=0, rows=rows, state=json.loads(json.dumps(state)))
batches.append(global_batch(next(resumed), shard, B, rows))
docs = sorted({d % B for d in src.read})
one = DataPipeline(TaskSource("copy,add,reverse", ByteTokenizer(), seed=3), batch_size=B, seq_len=T, prefetch=0)
want = [next(one) for _ in range(3)]  # what a one-process run (every row in this process) produces
equal = all(np.array_equal(multihost_utils.process_allgather(got[k], tiled=True), ref[k])
            for got, ref in zip(batches, want) for k in ref)
print(json.dumps({"rows": rows, "rows_of_documents_read": docs, "equal": equal, "state_rows": len(state["rows"])}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(worker: str) -> list[str]:
    """Run ``worker`` as processes 0 and 1 of one JAX runtime (one CPU device each); their last lines."""
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", worker, address, str(i)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    return [out.strip().splitlines()[-1] for out, _ in outs]


def test_two_processes_form_one_runtime():
    lines = sorted(_two_processes(WORKER))
    assert lines == ["process 0 of 2 devices 2 [10, 11]", "process 1 of 2 devices 2 [10, 11]"]


def test_two_processes_load_their_own_rows_of_the_one_process_batch():
    """Over data=2, process i makes (and reads the documents of) only batch rows 3i..3i+2; the global
    batches, also after resuming from the merged data state, equal a one-process pipeline's."""
    got = [json.loads(line) for line in _two_processes(DATA_WORKER)]
    assert [x["rows"] for x in got] == [[0, 1, 2], [3, 4, 5]]
    assert [x["rows_of_documents_read"] for x in got] == [[0, 1, 2], [3, 4, 5]]
    assert all(x["equal"] and x["state_rows"] == 6 for x in got), got


def test_one_process_holds_every_row():
    from jax.sharding import NamedSharding, PartitionSpec

    from m1jax.sharding import make_mesh
    from m1jax.train.placement import process_rows

    assert process_rows(NamedSharding(make_mesh(), PartitionSpec("fsdp")), (5, 3)) == [0, 1, 2, 3, 4]


def test_cli_rejects_a_bad_process_id():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", "generate", "--config=experiments/tiny.py",
                           "--num_processes=2", "--process_id=5"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "process_id=5: must be in [0, num_processes=2)" in proc.stderr
