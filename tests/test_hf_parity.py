"""Logit parity with transformers' native MiniMaxForCausalLM (fp32, CPU) and checkpoint loading."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers.models.minimax import modeling_minimax

from m1jax.convert import CheckpointError, SafetensorsError, load_hf
from tests.conftest import jit_logits, rel_err
from tests.hf_utils import OTHER_TINY, SPEC_TINY, make_torch_model, torch_logits

PARITY_TOL = 1e-4  # fp32 both sides; observed ~1e-6


@pytest.fixture(scope="module")
def spec_ckpt(tmp_path_factory):
    model = make_torch_model(0, **SPEC_TINY)
    path = tmp_path_factory.mktemp("spec_tiny")
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("name, config, seq", [("spec", SPEC_TINY, 21), ("other", OTHER_TINY, 30)])
def test_logits_match_native_transformers(tmp_path, rng, name, config, seq):
    model = make_torch_model(1, **config)
    model.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.decay_rule == "native"  # native-form config -> native's decay formula
    tokens = rng.integers(0, config["vocab_size"], (2, seq))
    assert seq > config["block_size"] and seq % config["block_size"] != 0
    err = rel_err(jit_logits(ours, jnp.asarray(tokens)), torch_logits(model, tokens))
    assert err < PARITY_TOL, err


def test_sharded_checkpoint_and_remote_form_config(tmp_path, rng, spec_ckpt):
    model, _ = spec_ckpt
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    # Rewrite config.json in the released checkpoints' remote-code form.
    cfg = json.loads((tmp_path / "config.json").read_text())
    remote = {k: v for k, v in cfg.items() if k not in ("layer_types", "rope_parameters") and "_factor" not in k}
    remote.update(
        attn_type_list=[0 if t == "linear_attention" else 1 for t in cfg["layer_types"]],
        rope_theta=cfg["rope_parameters"]["rope_theta"], rotary_dim=cfg["head_dim"],
        **{f"layernorm_{n}_{ab}": cfg[f"{m}_{ab}_factor"] for n, m in
           (("full_attention", "full_attn"), ("linear_attention", "linear_attn"), ("mlp", "mlp"))
           for ab in ("alpha", "beta")},
    )
    (tmp_path / "config.json").write_text(json.dumps(remote))
    ours = load_hf(tmp_path, decay_rule="native", block_size=8)
    assert ours.config.decay_rule == "native" and ours.config.rotary_dim == 16
    tokens = rng.integers(0, 128, (1, 19))
    assert rel_err(jit_logits(ours, jnp.asarray(tokens)), torch_logits(model, tokens)) < PARITY_TOL


def _partial_rope_patches(monkeypatch, rotary_dim):
    """Native transformers with RoPE restricted to the first rotary_dim dims of each head (half-split)."""

    def inv_freq(config, **kwargs):
        base = config.rope_parameters["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim)), 1.0

    def apply(q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

        def rot(x):
            xr, rest = x[..., :rotary_dim], x[..., rotary_dim:]
            return torch.cat([xr * cos + modeling_minimax.rotate_half(xr) * sin, rest], dim=-1)

        return rot(q), rot(k)

    monkeypatch.setattr(modeling_minimax.MiniMaxRotaryEmbedding, "compute_default_rope_parameters",
                        staticmethod(inv_freq))
    monkeypatch.setattr(modeling_minimax, "apply_rotary_pos_emb", apply)


def test_partial_rope_matches_patched_native(tmp_path, rng, monkeypatch):
    _partial_rope_patches(monkeypatch, rotary_dim=6)
    model = make_torch_model(2, **SPEC_TINY)
    model.save_pretrained(tmp_path)
    tokens = rng.integers(0, 128, (2, 17))
    expected = torch_logits(model, tokens)
    ours = load_hf(tmp_path, rotary_dim=6)
    assert rel_err(jit_logits(ours, jnp.asarray(tokens)), expected) < PARITY_TOL
    full = load_hf(tmp_path)  # rotary_dim == head_dim must NOT match: the test can fail
    assert rel_err(jit_logits(full, jnp.asarray(tokens)), expected) > 1e-3


# ------------------------------------------------------------------------------- bad checkpoints
def _rewrite(path, edit):
    f = path / "model.safetensors"
    tensors = load_file(f)
    edit(tensors)
    save_file(tensors, f)


def test_missing_tensor_is_named(tmp_path, spec_ckpt):
    _, src = spec_ckpt
    _copy(src, tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.2.self_attn.qkv_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.2\.self_attn\.qkv_proj\.weight'"):
        load_hf(tmp_path)


def test_unexpected_tensor_is_named(tmp_path, spec_ckpt):
    _, src = spec_ckpt
    _copy(src, tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.self_attn.bias": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.bias'"):
        load_hf(tmp_path)


def test_misshaped_tensor_is_named(tmp_path, spec_ckpt):
    _, src = spec_ckpt
    _copy(src, tmp_path)
    key = "model.layers.1.block_sparse_moe.experts.3.w2.weight"
    _rewrite(tmp_path, lambda t: t.update({key: np.zeros((64, 95), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"{key.replace('.', '[.]')}.*\[64, 95\].*\[64, 96\]"):
        load_hf(tmp_path)


def test_truncated_file_and_missing_shard(tmp_path, spec_ckpt):
    model, _ = spec_ckpt
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(p for p in tmp_path.iterdir() if p.name.endswith(".safetensors"))
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) - 100])
    with pytest.raises(SafetensorsError, match=f"{shards[0].name}: truncated"):
        load_hf(tmp_path)
    shards[0].unlink()
    with pytest.raises(CheckpointError, match=f"names shard '{shards[0].name}', which is missing"):
        load_hf(tmp_path)


def _copy(src, dst):
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
