"""Checkpoint export: Hugging Face round trips (Levanter style), torch state dicts, safety, memory."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file
from transformers import MiniMaxForCausalLM

from m1jax.convert import CheckpointError, load_hf, save_hf
from m1jax.convert.safetensors_io import SafetensorsReader
from m1jax.convert.torch_io import load_torch, save_torch
from tests.conftest import jit_logits, rel_err
from tests.hf_utils import SPEC_TINY, make_torch_model, torch_logits

TOL = 1e-4  # fp32 on both sides


def _from_pretrained(path):
    model, info = MiniMaxForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def test_round_trip_hf_m1jax_hf(tmp_path, rng):
    torch_model = make_torch_model(5, **SPEC_TINY)
    torch_model.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    tokens = rng.integers(0, 128, (2, 20))
    expected = torch_logits(torch_model, tokens)
    assert rel_err(jit_logits(ours, jnp.asarray(tokens)), expected) < TOL
    save_hf(ours, tmp_path / "out", shard_size="60KB", native_buffers=True)
    assert len(json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert rel_err(torch_logits(_from_pretrained(tmp_path / "out"), tokens), expected) < TOL
    # Without the derived buffers the remote-code layout is written: the same tensors as save_pretrained.
    save_hf(ours, tmp_path / "plain")
    written = set(SafetensorsReader(tmp_path / "plain" / "model.safetensors").keys())
    native = set(load_file(tmp_path / "hf" / "model.safetensors"))
    assert written == {k for k in native if not k.endswith(("decay", "slope_rate"))}


def test_model_trained_in_m1jax_exports_to_torch(tmp_path, rng):
    torch_model = make_torch_model(6, **SPEC_TINY)
    torch_model.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    tokens = jnp.asarray(rng.integers(0, 128, (2, 17)))

    @nnx.jit
    def train_step(model, opt, tokens):
        def loss_fn(model):
            logits = model(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(train_step(model, opt, tokens)) for _ in range(3)]
    assert losses[-1] < losses[0]
    save_hf(model, tmp_path / "trained", native_buffers=True)
    reloaded = _from_pretrained(tmp_path / "trained")
    probe = rng.integers(0, 128, (1, 19))
    ours = jit_logits(model, jnp.asarray(probe))
    assert rel_err(torch_logits(reloaded, probe), ours) < TOL
    assert rel_err(torch_logits(torch_model, probe), ours) > 1e-3  # training really changed it


def test_torch_state_dict_round_trip(tmp_path, rng):
    torch_model = make_torch_model(7, **SPEC_TINY)
    torch_model.save_pretrained(tmp_path / "hf")  # original key names, as outside-HF users have them
    state_dict = {k: torch.from_numpy(v) for k, v in load_file(tmp_path / "hf" / "model.safetensors").items()}
    ours = load_hf(tmp_path / "hf")
    from_sd = load_torch(state_dict, ours.config)
    tokens = jnp.asarray(rng.integers(0, 128, (1, 18)))
    np.testing.assert_array_equal(jit_logits(from_sd, tokens), jit_logits(ours, tokens))
    save_torch(ours, tmp_path / "model.pt", key_names="checkpoint")  # the on-disk names (native: test_exports)
    back = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(back) == {k for k in state_dict if not k.endswith(("decay", "slope_rate"))}
    for k, v in back.items():
        assert torch.equal(v, state_dict[k]), k
    from_file = load_torch(tmp_path / "model.pt", ours.config)
    np.testing.assert_array_equal(jit_logits(from_file, tokens), jit_logits(ours, tokens))


def test_bf16_round_trip_is_bit_exact(tmp_path):
    torch_model = make_torch_model(8, **SPEC_TINY).to(torch.bfloat16)
    torch_model.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    assert ours.config.param_dtype == "bfloat16"
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    save_hf(ours, tmp_path / "out")
    a = SafetensorsReader(tmp_path / "hf" / "model.safetensors")
    b = SafetensorsReader(tmp_path / "out" / "model.safetensors")
    for key in b.keys():  # noqa: SIM118 (a reader, not a dict)
        assert a.dtype(key) == b.dtype(key) and a.read(key).tobytes() == b.read(key).tobytes(), key
    save_torch(ours, tmp_path / "m.pt")
    sd = torch.load(tmp_path / "m.pt", weights_only=True)
    ref = torch_model.state_dict()
    for key in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.experts.gate_up_proj"):  # native names
        assert torch.equal(sd[key], ref[key]), key


# -------------------------------------------------------------------------------------------- safety
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "hf"
    make_torch_model(9, **SPEC_TINY).save_pretrained(path)
    return path


def test_interrupted_save_leaves_nothing_valid_looking(tmp_path, ckpt, monkeypatch):
    model = load_hf(ckpt)
    from m1jax.convert import hf

    real = hf.write_safetensors
    calls = []

    def failing(path, specs, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(path, specs, metadata)

    monkeypatch.setattr(hf, "write_safetensors", failing)
    with pytest.raises(KeyboardInterrupt):
        save_hf(model, tmp_path / "out", shard_size="30KB")
    assert os.listdir(tmp_path) == []  # no destination and no leftover partial directory
    # An existing checkpoint survives a failed overwrite intact.
    monkeypatch.setattr(hf, "write_safetensors", real)
    save_hf(model, tmp_path / "out")
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    calls.clear()
    monkeypatch.setattr(hf, "write_safetensors", failing)
    with pytest.raises(KeyboardInterrupt):
        save_hf(model, tmp_path / "out", shard_size="30KB", overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_existing_destination_is_refused_before_work(tmp_path, ckpt):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_hf(load_hf(ckpt), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_wrong_dtype_and_config_mismatch_are_named(tmp_path, ckpt):
    from safetensors.numpy import save_file

    (tmp_path / "a").mkdir()
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.norm.weight"] = np.zeros(64, np.int32)
    save_file(tensors, tmp_path / "a" / "model.safetensors")
    (tmp_path / "a" / "config.json").write_text((ckpt / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight'.*dtype int32"):
        load_hf(tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"'model\.embed_tokens\.weight'.*\[128, 64\], expected \[128, 80\]"):
        load_hf(ckpt, hidden_size=80)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.3\."):
        load_hf(ckpt, num_hidden_layers=3, attn_type_list=(0, 1, 0))


# -------------------------------------------------------------------------------------------- memory
MEMORY_SCRIPT = r"""
import json, os, resource, sys
import numpy as np
from m1jax.config import ModelConfig
from m1jax.convert.hf import _write_checkpoint, convert_hf, export_specs
from m1jax.convert import names
from m1jax.convert.safetensors_io import TensorSpec

src, dst = sys.argv[1], sys.argv[2]
runtime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # after importing jax, flax, m1jax
config = ModelConfig.tiny(vocab_size=4096, hidden_size=512, intermediate_size=1024, num_hidden_layers=16,
                          attn_type_list=(0, 0, 0, 1) * 4, num_attention_heads=8, num_key_value_heads=2,
                          head_dim=64, rotary_dim=32, num_local_experts=32)
from m1jax.convert.hf import _skeleton, get_param
skel = _skeleton(config)
specs = []
largest = 0
for entry in names.entries(config):
    shape = tuple(get_param(skel, entry.ours).get_value().shape)
    per_key = shape[1:] if entry.per_expert else shape
    per_key = per_key[::-1] if entry.transpose else per_key
    for i, key in enumerate(entry.hf_keys):
        largest = max(largest, int(np.prod(per_key)) * 4)
        specs.append(TensorSpec(key, per_key, np.float32,
                                lambda s=per_key, i=i: np.random.default_rng(i).standard_normal(s, np.float32)))
_write_checkpoint(specs, config, src, shard_size="300MB", overwrite=False)
total = sum(s.nbytes for s in specs)
convert_hf(src, dst, dtype="bfloat16", shard_size="200MB")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # covers both the write and the conversion
print(json.dumps({"total": total, "largest": largest, "runtime": runtime, "peak": peak}))
"""


@pytest.mark.slow
def test_streaming_conversion_memory_is_bounded(tmp_path):
    """A ~2.4 GB fp32 checkpoint (16 layers x 32 experts) re-written as bf16: peak RSS stays bounded."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "src"), str(tmp_path / "dst")],
                          capture_output=True, text=True, env=env, timeout=900,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["total"] > 2e9
    # Memory beyond the imported runtime stays under 2x the largest tensor + 500 MB (the model is 2.4 GB).
    assert r["peak"] - r["runtime"] < 2 * r["largest"] + 500e6, r
    reader = SafetensorsReader(sorted((tmp_path / "dst").glob("*.safetensors"))[0])
    assert str(reader.dtype(next(iter(reader.keys())))) == "bfloat16"


# ----------------------------------------------------------------------------------------------- CLI
def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", "m1jax.cli.main", "convert", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_hf_to_orbax_to_hf(tmp_path, ckpt, rng):
    proc = _cli("hf-to-orbax", str(ckpt), str(tmp_path / "orbax"), "--dtype=bfloat16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _cli("orbax-to-hf", str(tmp_path / "orbax"), str(tmp_path / "hf"), "--shard-size=40KB")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    original, back = load_hf(ckpt, dtype="bfloat16"), load_hf(tmp_path / "hf")
    assert back.config.param_dtype == "bfloat16"
    for a, b in zip(jax.tree.leaves(nnx.state(original, nnx.Param)), jax.tree.leaves(nnx.state(back, nnx.Param)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from m1jax.train.checkpoint import restore_params

    restored = restore_params(str(tmp_path / "orbax"))  # what `train --config.init_from=...` reads
    tokens = jnp.asarray(rng.integers(0, 128, (1, 12)))
    np.testing.assert_array_equal(jit_logits(restored, tokens), jit_logits(back, tokens))
    proc = _cli("orbax-to-hf", str(tmp_path / "orbax"), str(tmp_path / "hf"))
    assert proc.returncode != 0 and "--overwrite" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["sideways", "a", "b"], "unknown direction 'sideways'"),
        (["hf-to-hf", "/nonexistent/src", "DST"], "source /nonexistent/src does not exist"),
        (["hf-to-hf", "SRC", "DST", "--dtype=int8"], "--dtype='int8'"),
        (["hf-to-hf", "SRC", "DST", "--shard-size=lots"], "cannot parse size 'lots'"),
        (["hf-to-hf", "SRC"], "expected DIRECTION SRC DST"),
        (["hf-to-torch", "SRC", "DST", "--tokenizer=bytes"], "--tokenizer does not apply to hf-to-torch"),
        (["torch-to-hf", "SRC", "DST"], "torch-to-hf needs --model-config"),
    ],
)
def test_cli_bad_arguments(tmp_path, ckpt, args, message):
    args = [a.replace("SRC", str(ckpt)).replace("DST", str(tmp_path / "out")) for a in args]
    proc = _cli(*args)
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
