"""Multi-process JAX: initialize_distributed from the CLI flags' values, two CPU processes on localhost."""

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_form_one_runtime():
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    lines = sorted(out.strip().splitlines()[-1] for out, _ in outs)
    assert lines == ["process 0 of 2 devices 2 [10, 11]", "process 1 of 2 devices 2 [10, 11]"]


def test_cli_rejects_a_bad_process_id():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", "generate", "--config=experiments/tiny.py",
                           "--num_processes=2", "--process_id=5"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "process_id=5: must be in [0, num_processes=2)" in proc.stderr
