"""Experiment presets and the config checks that run before any work."""

import pytest

from experiments import pretrain
from m1jax.train.config import validate
from m1jax.train.loop import describe


@pytest.mark.parametrize("preset", ["tiny", "add_warmstart", "countdown_warmstart", "100m", "1b", "m1_456b"])
def test_presets_validate_and_have_the_intended_size(preset):
    cfg = pretrain.get_config(preset)
    info = describe(cfg, validate(cfg))
    active = info["params_active_non_embedding"]
    small = (1e4, 1e6)
    expect = {"tiny": small, "add_warmstart": small, "countdown_warmstart": small, "100m": (0.7e8, 1.3e8),
              "1b": (0.8e9, 1.2e9), "m1_456b": (45.5e9, 46.5e9)}[preset]
    assert expect[0] < active < expect[1], active


@pytest.mark.parametrize("key, value, message", [
    ("optim.lr", -1e-3, "config.optim.lr=-0.001: must be a positive finite number"),
    ("optim.lr", float("nan"), "config.optim.lr=nan"),
    ("optim.b2", 1.0, "config.optim.b2=1.0: must be in [0, 1)"),
    ("optim.grad_accum_steps", 3, "must divide data.batch_size=16"),
    ("optim.warmup_steps", -1, "config.optim.warmup_steps=-1"),
    ("steps", 0, "config.steps=0: must be a positive int"),
    ("data.seq_len", 0, "config.data.seq_len=0"),
    ("data.source", "web", "config.data.source='web': must be one of"),
    ("data.tasks", "copy,fly", "unknown task 'fly'"),
    ("data.tokenizer", "/no/such/tokenizer.json", "config.data.tokenizer='/no/such/tokenizer.json'"),
    ("kernels.moe", "sparse", "config.kernels.moe='sparse'"),
    ("kernels.softmax", "flash", "config.kernels.softmax='flash': must be one of"),
    ("kernels.expert_matmul", "cublas", "config.kernels.expert_matmul='cublas': must be one of"),
    ("model.lm_head_dtype", "int8", "ModelConfig.lm_head_dtype='int8'"),
    ("model.vocab_size", 200, "config.model.vocab_size=200: smaller than the tokenizer's vocabulary (258"),
    ("model.rotary_dim", 7, "ModelConfig.rotary_dim=7"),
    ("data.loss_on", "prompt", "config.data.loss_on='prompt': must be one of ('answer', 'all')"),
    ("eval.every", -1, "config.eval.every=-1: must be an int >= 0 (0 = off)"),
    ("eval.problems", 0, "config.eval.problems=0: must be a positive int"),
    ("model.max_position_embeddings", 16, "config.eval.every=100: held-out prompt + answer + EOS need"),
])
def test_bad_values_are_named(key, value, message):
    cfg = pretrain.get_config("tiny")
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
    with pytest.raises(ValueError) as e:
        validate(cfg)
    assert message in str(e.value)


def test_text_source_needs_existing_paths(tmp_path):
    cfg = pretrain.get_config("tiny")
    cfg.data.source, cfg.data.paths = "text", str(tmp_path / "*.jsonl")
    with pytest.raises(ValueError, match="config.data.paths=.*matches no file"):
        validate(cfg)
    (tmp_path / "a.jsonl").write_text('{"text": "hi"}\n')
    validate(cfg)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        pretrain.get_config("huge")


@pytest.mark.parametrize("preset", ["tiny", "tiny_countdown", "1b"])
def test_rl_presets_validate(preset):
    from experiments import rl
    from m1jax.rl.config import validate as validate_rl

    cfg = rl.get_config(preset)
    model = validate_rl(cfg)
    assert model.lm_head_dtype == "float32"  # M1's RL head
    assert cfg.loss.name == "cispo" and cfg.rollout.temperature == 1.0


def test_warmup_longer_than_the_run_is_named():
    cfg = pretrain.get_config("tiny")
    cfg.optim.warmup_steps = cfg.steps + 1
    message = rf"config.optim.warmup_steps={cfg.steps + 1}: must be an int in \[0, steps={cfg.steps}\]"
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_a_workdir_that_is_a_file_is_named(tmp_path):
    from m1jax.rl.loop import rl
    from m1jax.train import train

    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    for run, cfg in ((train, pretrain.get_config("tiny")), (rl, _rl_config("tiny"))):
        with pytest.raises(ValueError, match="notes.txt is a file, not a directory"):
            run(cfg, str(path))
    assert path.read_text() == "keep me"


def _rl_config(preset):
    from experiments import rl

    return rl.get_config(preset)
