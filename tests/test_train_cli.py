"""`m1jax train` end to end (subprocesses sharing a JAX compilation cache): the tiny preset learns,
a run killed with SIGKILL or stopped with SIGTERM resumes and reproduces the uninterrupted losses
exactly, divergence stops with a clear message, bad configs fail before any work."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from m1jax.train.metrics import read_jsonl
from m1jax.train.tensorboard import read_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
# The tiny preset, shrunk so each step takes milliseconds on a CPU.
ARGS = ["train", "--config=experiments/pretrain.py:tiny", f"--config.steps={STEPS}",
        "--config.model.num_hidden_layers=2", "--config.model.attn_type_list=(0, 1)", "--config.model.hidden_size=32",
        "--config.model.head_dim=16", "--config.model.rotary_dim=8", "--config.model.intermediate_size=32",
        "--config.data.batch_size=8", "--config.data.seq_len=64",
        "--config.checkpoint.every=10", "--config.checkpoint.keep=2", "--config.log.every=20",
        "--config.eval.every=30", "--config.eval.problems=3"]  # held-out exact match at steps 30 and 60


def python_path():
    return os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=python_path(), JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def cli(env, workdir, *extra, **kw):
    return subprocess.Popen([sys.executable, "-m", "m1jax.cli.main", *ARGS, f"--workdir={workdir}", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def run(env, workdir, *extra):
    proc = cli(env, workdir, *extra)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def losses(workdir):
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), "one record per step, in order"
    return np.array([r["loss"] for r in rows]), np.array([r["grad_norm"] for r in rows])


def wait_for_step(proc, workdir, step, timeout=240):
    path, start = os.path.join(workdir, "metrics.jsonl"), time.time()
    while time.time() - start < timeout:
        rows = read_jsonl(path)
        if rows and rows[-1]["step"] >= step:
            return rows[-1]["step"]
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    raise TimeoutError(f"no step {step} after {timeout} s")


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    code, out = run(env, workdir)
    assert code == 0, out
    return workdir, out


def test_tiny_preset_learns_and_logs(reference):
    workdir, out = reference
    loss, grad_norm = losses(workdir)
    assert len(loss) == STEPS and np.all(np.isfinite(grad_norm))
    assert loss[0] > 5.0 and loss[-5:].mean() < 0.65 * loss[0], loss[::10]
    assert f"step {STEPS}/{STEPS}" in out and "tok/s" in out
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert {"lr", "tokens_per_s", "mfu", "router/max_load", "aux_loss", "accuracy"} <= set(rows[0])
    assert rows[0]["mfu"] is None  # CPU: no peak to compare against
    em = [f"eval/exact_match/{t}" for t in ("copy", "reverse", "sort", "add", "mean")]
    assert [r["step"] for r in rows if set(em + ["eval_s"]) <= set(r)] == [30, 60]
    assert all(0 <= rows[59][k] <= 1 for k in em) and not set(em) & set(rows[0])
    assert "step 60 held-out exact match: copy " in out and "| eval EM " in out
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["50", "60"]  # keep-last-2
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["steps"] == STEPS
    (events,) = os.listdir(os.path.join(workdir, "tb"))
    assert len(read_records(os.path.join(workdir, "tb", events))) == STEPS + 1  # + the file_version header


def test_sigterm_and_sigkill_then_rerun_reproduce_the_uninterrupted_losses(env, reference, tmp_path):
    # SIGTERM: the run saves a checkpoint at the step it is on and exits with 128 + 15
    proc = cli(env, tmp_path)
    wait_for_step(proc, tmp_path, 13)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    stopped = losses(tmp_path)[0].size
    assert stopped < STEPS and str(stopped) in os.listdir(os.path.join(tmp_path, "checkpoints")), out
    # rerun, then SIGKILL: no chance to save; the rerun resumes from the last complete checkpoint
    proc = cli(env, tmp_path)
    wait_for_step(proc, tmp_path, stopped + 22)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and f"resuming from step {stopped}" in out, out
    assert len(losses(tmp_path)[0]) < STEPS, "killed before the end"
    code, out = run(env, tmp_path)
    assert code == 0 and "resuming from step" in out, out
    ref_loss, ref_gn = losses(reference[0])
    loss, gn = losses(tmp_path)
    np.testing.assert_array_equal(loss, ref_loss)  # bit-identical, not just close
    np.testing.assert_array_equal(gn, ref_gn)


def test_divergence_stops_with_a_clear_message(env, reference, tmp_path):
    import jax
    import orbax.checkpoint as ocp

    # a params checkpoint whose LM head holds a NaN: the first step's loss is NaN
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    good = os.path.join(reference[0], "checkpoints", "60")
    params = ckptr.restore(good, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
    params = jax.tree.map(np.asarray, params)
    params["lm_head"] = params["lm_head"].copy()
    params["lm_head"][0, 0] = np.nan
    from m1jax.train.checkpoint import load_config, save_params

    bad = save_params(str(tmp_path / "nan_params"), params, load_config(good))
    code, out = run(env, tmp_path / "run", f"--config.init_from={bad}")
    assert code == 1 and "training diverged" in out and "step 1: loss=nan" in out, out
    assert os.listdir(tmp_path / "run" / "checkpoints") == []


@pytest.mark.parametrize("extra, message", [
    (["--config.optim.lr=-0.001"], "config.optim.lr=-0.001: must be a positive finite number"),
    (["--config.optim.learning_rate=1e-3"], "learning_rate"),
    (["--config=experiments/pretrain.py:huge"], "unknown preset 'huge'"),
])
def test_bad_config_fails_before_any_work(extra, message, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=python_path())
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", *ARGS, f"--workdir={workdir}", *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not workdir.exists()


def test_fsdp_mesh_on_two_devices_matches_one_device(env, reference, tmp_path):
    env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = cli(env, tmp_path, "--config.mesh.fsdp=2")  # params split along embed, the batch along rows
    wait_for_step(proc, tmp_path, 8)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "'fsdp': 2" in out, out
    loss = losses(tmp_path)[0]
    np.testing.assert_allclose(loss, losses(reference[0])[0][: len(loss)], rtol=2e-5)  # reduction order differs
    from m1jax.train.checkpoint import restore_params

    model = restore_params(str(tmp_path))  # the sharded checkpoint, read back onto one device
    assert model.lm_head[...].shape == (32, 258)


def test_generate_from_the_training_workdir_with_text_prompts(reference, env):
    """`m1jax generate --config.checkpoint=<train workdir> --config.prompt=...` (from another directory) loads the
    run's latest checkpoint, prints each prompt with its decoded completion, and matches the library's sample on
    the restored params."""
    import jax

    from m1jax.cli.generate import generate_text
    from m1jax.data.tokenizer import ByteTokenizer
    from m1jax.train import restore_params

    workdir, _ = reference
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", "generate", "--config=experiments/tiny.py",
                           f"--config.checkpoint={workdir}", "--config.prompt=copy ab=|sort 3 1 2=",
                           "--config.max_new_tokens=8"], cwd=str(workdir), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("[0] copy ab=") and lines[1].startswith("[0] sort 3 1 2="), proc.stdout
    want = generate_text(restore_params(str(workdir)), ["copy ab=", "sort 3 1 2="], ByteTokenizer(), jax.random.key(0),
                         max_new_tokens=8, temperature=0.0)
    assert [ln.split("=", 1)[1].removesuffix("  <no EOS>") for ln in lines[:2]] == [w["text"] for w in want]
