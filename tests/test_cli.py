"""The CLI's main job and its error handling."""

import os
import subprocess
import sys

import pytest

from experiments import tiny
from m1jax.cli import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generate_main_job_checks_cache_against_full_forward(tmp_path):
    cfg = tiny.get_config("smoke")
    with cfg.unlocked():
        cfg.batch_size, cfg.prompt_len, cfg.max_new_tokens = 2, 11, 6
    result = generate.main(cfg, str(tmp_path))
    assert result["cache_vs_full_forward_max_logprob_diff"] < 1e-4
    assert len(result["first_completion"]) == 6 and result["layers"] == "LLLLLLLF"
    assert (tmp_path / "config.json").exists() and (tmp_path / "generate.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--config=experiments/tiny.py:nope"], "unknown preset 'nope'"),
        (["generate", "--config=experiments/tiny.py", "--config.model.rotary_dim=7"], "ModelConfig.rotary_dim=7"),
        (["generate", "--config=experiments/tiny.py", "--config.no_such_key=1"], "no_such_key"),
        (["train2"], "unknown command 'train2'"),
    ],
)
def test_cli_errors_name_the_problem(args, message):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_generate_text_prompts_are_decoded(tmp_path, capsys):
    cfg = tiny.get_config("smoke")
    with cfg.unlocked():
        cfg.model.vocab_size = 258  # the byte tokenizer's
        cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.num_samples = "12+3=|héllo", 5, 1.0, 2
    result = generate.main(cfg, str(tmp_path))
    samples = result["samples"]
    assert [(s["prompt"], s["sample"]) for s in samples] == [("12+3=", 0), ("12+3=", 1), ("héllo", 0), ("héllo", 1)]
    assert all(isinstance(s["text"], str) and 1 <= s["tokens"] <= 5 for s in samples)
    out = capsys.readouterr().out
    assert "[0] 12+3=" in out and "[1] héllo" in out
    with cfg.unlocked():
        cfg.batch_slots = 3  # continuous batching: 4 rows through 3 slots, the same samples
    assert [s["text"] for s in generate.main(cfg, str(tmp_path))["samples"]] == [s["text"] for s in samples]


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"], ["help"]])
def test_top_level_help_lists_the_commands(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "rl", "generate", "convert"):
        assert f"\n  {command} " in proc.stdout and f"m1jax {command} " in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--config=experiments/pretrain.py:tiny", "--config.optim.learning_rate=1e-3"],
     "m1jax train: --config.optim.learning_rate: config.optim has no key 'learning_rate'; config.optim has b1"),
    (["rl", "--config=experiments/rl.py:tiny", "--config.los.name=grpo"],
     "m1jax rl: --config.los.name: config has no key 'los'; did you mean config.loss"),
    (["generate", "--config.checkpoint=/runs/a"], "m1jax generate: --config.checkpoint needs a --config=FILE"),
])
def test_mistyped_config_key_is_one_line_with_suggestions(args, message):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", *args, "--workdir=/nonexistent/never"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command, presets", [("train", "add_warmstart"), ("rl", "tiny_countdown"),
                                              ("generate", "smoke"), ("convert", None)])
def test_command_help_says_what_it_does_its_presets_and_keys(command, presets):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", command, "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"example: m1jax {command}" in proc.stdout
    if presets:
        assert "presets (" in proc.stdout and presets in proc.stdout
        assert "config keys" in proc.stdout and "seed = " in proc.stdout


@pytest.fixture(scope="module")
def truncated_checkpoint(tmp_path_factory):
    from flax import nnx

    import m1jax
    from m1jax.convert import save_hf

    path = tmp_path_factory.mktemp("ckpt") / "hf"
    save_hf(m1jax.MiniMaxM1(m1jax.ModelConfig.tiny(), rngs=nnx.Rngs(0)), str(path))
    weights = path / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    return path


@pytest.mark.parametrize("case", ["direction", "truncated", "destination", "temperature"])
def test_user_errors_are_one_line_with_exit_status_2(case, truncated_checkpoint, tmp_path):
    args, message = {
        "direction": (["convert", "sideways", "a", "b"], "m1jax convert: unknown direction 'sideways'"),
        "truncated": (["convert", "hf-to-orbax", str(truncated_checkpoint), str(tmp_path / "out")],
                      "m1jax convert: " + str(truncated_checkpoint / "model.safetensors") + ": truncated"),
        "destination": (["convert", "hf-to-hf", str(truncated_checkpoint), str(tmp_path)],
                        f"m1jax convert: destination {tmp_path} exists; pass --overwrite"),
        "temperature": (["generate", "--config=experiments/tiny.py", "--config.temperature=-1"],
                        "m1jax generate: temperature must be a finite number >= 0"),
    }[case]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[0].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ configs from any directory, quiet logs

def _user_env() -> dict:
    """A user's shell: m1jax and experiments found through the installation (`pip install -e .`, what `make`
    runs), not through PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "JAX_PLATFORMS": "cpu"}


def test_config_path_resolves_from_another_directory_and_dry_run_prints_once(tmp_path):
    # tmp_path has no experiments/: the file is found in the checkout m1jax is installed from.
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", "train", "--config=experiments/pretrain.py:m1_456b",
                           "--config.dry_run=True"], cwd=tmp_path, env=_user_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("dry run") == 1 and "{" not in out, out  # once, and no raw JSON
    assert "80 layers (70 lightning, 10 softmax)" in out
    assert "456.1B total, 48.4B active per token (45.9B without the embedding and LM head)" in out
    assert "288.8 GFLOP per token" in out and "3.3 TiB" in out


def test_missing_config_file_is_one_line_naming_the_places_looked(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", "train", "--config=experiments/nope.py:tiny"],
                          cwd=tmp_path, env=_user_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("m1jax train: --config=experiments/nope.py: no such config file (looked for "), err
    assert str(tmp_path / "experiments" / "nope.py") in err and os.path.join(REPO, "experiments", "nope.py") in err


def test_experiments_import_from_the_notebooks_directory():
    code = "from experiments.pretrain import get_config; from experiments import rl; print(get_config('tiny').steps)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(REPO, "notebooks"), env=_user_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "600"


def test_commands_do_not_print_jax_and_orbax_info_logs(tmp_path):
    # Convert a checkpoint with no JAX_PLATFORMS, so that jax probes for backends it does not have ("Unable to
    # initialize backend 'tpu'", logged at INFO) and orbax logs its save.
    from flax import nnx

    import m1jax
    from m1jax.convert import save_hf

    src = save_hf(m1jax.MiniMaxM1(m1jax.ModelConfig.tiny(), rngs=nnx.Rngs(0)), str(tmp_path / "hf"))
    env = {k: v for k, v in _user_env().items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run([sys.executable, "-m", "m1jax.cli.main", "convert", "hf-to-orbax", src,
                           str(tmp_path / "orbax")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Unable to initialize backend" not in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line[:1] == "I" and line[1:5].isdigit()], proc.stderr
