"""Exports that load cleanly: native-named .pt files, HF directories with tokenizer and generation config."""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoTokenizer, GenerationConfig, MiniMaxConfig, MiniMaxForCausalLM, PreTrainedTokenizerFast

from m1jax.cli.convert import convert
from m1jax.config import ModelConfig
from m1jax.convert import load_hf, save_hf
from m1jax.convert.hf_files import byte_tokenizer_json
from m1jax.convert.torch_io import load_torch, save_torch
from m1jax.data.tokenizer import ByteTokenizer, load_tokenizer
from m1jax.model import MiniMaxM1
from tests.conftest import jit_logits, rel_err
from tests.hf_utils import OTHER_TINY, SPEC_TINY, make_torch_model, torch_logits

TOL = 1e-4  # fp32 on both sides
BYTES_TINY = {**SPEC_TINY, "vocab_size": 258}  # room for the byte tokenizer


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """(transformers model, its save_pretrained directory, the m1jax model loaded from it), vocab 258."""
    torch_model = make_torch_model(21, **BYTES_TINY)
    path = tmp_path_factory.mktemp("bytes") / "hf"
    torch_model.save_pretrained(path)
    return torch_model, path, load_hf(path)


def _strict_load(state_dict, spec):
    model = MiniMaxForCausalLM(MiniMaxConfig(**spec)).eval()
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    return model


def model_config(tmp_path, torch_model) -> ModelConfig:
    torch_model.config.save_pretrained(tmp_path / "config")
    return ModelConfig.from_hf(tmp_path / "config")


@pytest.mark.parametrize("spec", [SPEC_TINY, OTHER_TINY], ids=["spec_tiny", "other_tiny"])
def test_pt_loads_strict_in_transformers(tmp_path, rng, spec):
    """Native names: read (fused experts sliced) and written (fused back) so a strict load reproduces the model."""
    torch_model = make_torch_model(int(rng.integers(1 << 30)), **spec)
    native = torch_model.state_dict()
    config = model_config(tmp_path, torch_model)
    ours = load_torch(native, config)  # a native state dict in memory: gate_up_proj, down_proj, mlp.gate
    tokens = rng.integers(0, spec["vocab_size"], (2, 19))
    expected = torch_logits(torch_model, tokens)
    assert rel_err(jit_logits(ours, jnp.asarray(tokens)), expected) < TOL
    save_torch(ours, tmp_path / "model.pt")  # default: native names
    written = torch.load(tmp_path / "model.pt", weights_only=True)
    reloaded = _strict_load(written, spec)
    assert rel_err(torch_logits(reloaded, tokens), expected) < TOL
    for key, value in native.items():  # parameters bit for bit; the derived buffers to rounding
        if key.endswith(("decay", "slope_rate")):
            torch.testing.assert_close(written[key], value, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(written[key], value), key
    back = load_torch(tmp_path / "model.pt", config)  # what torch-to-hf / torch-to-orbax read
    np.testing.assert_array_equal(jit_logits(back, jnp.asarray(tokens)), jit_logits(ours, jnp.asarray(tokens)))


def test_pt_checkpoint_names_and_cli_round_trip(tmp_path, byte_model, rng):
    _, hf_dir, ours = byte_model
    convert("hf-to-torch", str(hf_dir), str(tmp_path / "ckpt.pt"), names="checkpoint")
    on_disk = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert "model.layers.0.block_sparse_moe.experts.3.w3.weight" in on_disk
    with pytest.raises(RuntimeError, match="gate_up_proj"):  # why native is the default for .pt
        _strict_load(on_disk, BYTES_TINY)
    convert("hf-to-torch", str(hf_dir), str(tmp_path / "native.pt"))
    convert("torch-to-hf", str(tmp_path / "native.pt"), str(tmp_path / "hf"), model_config=str(hf_dir))
    convert("torch-to-orbax", str(tmp_path / "ckpt.pt"), str(tmp_path / "orbax"), model_config=str(hf_dir))
    from m1jax.train.checkpoint import restore_params

    tokens = jnp.asarray(rng.integers(0, 258, (1, 13)))
    for model in (load_hf(tmp_path / "hf"), restore_params(str(tmp_path / "orbax"))):
        np.testing.assert_array_equal(jit_logits(model, tokens), jit_logits(ours, tokens))
    with pytest.raises(ValueError, match="--names does not apply to torch-to-hf"):
        convert("torch-to-hf", str(tmp_path / "native.pt"), str(tmp_path / "x"), names="native",
                model_config=str(hf_dir))


def _cli(*args, **env):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", "m1jax.cli.main", "convert", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


def _from_pretrained(path):
    model, info = MiniMaxForCausalLM.from_pretrained(path, output_loading_info=True)
    return model.eval(), {k: sorted(v) for k, v in info.items() if k != "error_msgs"}


def test_cli_orbax_to_hf_loads_clean_with_tokenizer(tmp_path, byte_model, rng):
    """A training run's checkpoint -> HF dir: no missing keys with --native-buffers, the run's tokenizer,
    BOS / EOS ids, generation config; quiet logs. hf-to-hf then carries the tokenizer and generation config."""
    from m1jax.train.checkpoint import save_params

    _, _, ours = byte_model
    run = tmp_path / "run"
    save_params(str(run / "checkpoints" / "7"), ours)
    (run / "config.json").write_text(json.dumps({"data": {"tokenizer": "bytes", "bos_token": "", "eos_token": ""}}))
    proc = _cli("orbax-to-hf", str(run), str(tmp_path / "hf"), "--native-buffers")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tokenizer: bytes (the run's data.tokenizer)" in proc.stdout
    assert not re.search(r"^I\d{4} ", proc.stderr, re.M), proc.stderr[:2000]  # no absl / orbax INFO lines
    model, info = _from_pretrained(tmp_path / "hf")
    assert not any(info.values()), info
    tokens = rng.integers(0, 258, (2, 18))
    assert rel_err(torch_logits(model, tokens), jit_logits(ours, jnp.asarray(tokens))) < TOL
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (256, 257)
    gen = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (256, 257, 257)
    assert model.generation_config.eos_token_id == 257
    text = "héllo, wörld 🙂"
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok(text)["input_ids"] == [256, *ByteTokenizer().encode(text).tolist()]
    # Default: no buffers (the released checkpoints' tensor set); hf-to-hf carries tokenizer + generation config.
    proc = _cli("hf-to-hf", str(tmp_path / "hf"), str(tmp_path / "hf2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "hf2" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name
    _, info = _from_pretrained(tmp_path / "hf2")
    assert info["missing_keys"] and all(k.endswith(("decay", "slope_rate")) for k in info["missing_keys"])
    assert not info["unexpected_keys"] and not info["mismatched_keys"]


def test_byte_tokenizer_json_matches_ours(tmp_path, rng):
    from tokenizers import Tokenizer

    ours = ByteTokenizer()
    (tmp_path / "tokenizer.json").write_bytes(byte_tokenizer_json())
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), split_special_tokens=True)
    chars = [*"aZ09 \t\n.,<|>", "é", "ß", "中", "🙂", "\u0100", "\x00", "\x7f"]
    texts = ["".join(rng.choice(chars, rng.integers(0, 40))) for _ in range(50)] + ["", "a <|bos|> b <|eos|>"]
    for text in texts:
        ids = ours.encode(text).tolist()
        assert fast(text, add_special_tokens=False)["input_ids"] == ids, text
        assert fast(text)["input_ids"] == [256, *ids], text  # BOS first, as m1jax's data and generate put it
        assert raw.decode(ids) == text
        if "<|bos|>" not in text and "<|eos|>" not in text:  # raw tokenizers matches special tokens in text
            assert raw.encode(text, add_special_tokens=False).ids == ids, text
    for _ in range(100):  # any ids, invalid UTF-8 and special tokens included
        ids = rng.integers(0, 258, rng.integers(0, 30)).tolist()
        assert raw.decode(ids, skip_special_tokens=True) == ours.decode(ids), ids
        assert fast.decode(ids, skip_special_tokens=True) == ours.decode(ids), ids
    assert (raw.token_to_id("<|bos|>"), raw.token_to_id("<|eos|>"), raw.get_vocab_size()) == (256, 257, 258)


def test_tokenizer_files_and_failures(tmp_path, byte_model):
    """A saved byte tokenizer reads back through m1jax's own loader; a tokenizer too big for the model,
    or a missing one, fails before anything is written."""
    _, _, ours = byte_model
    save_hf(ours, tmp_path / "hf", tokenizer="bytes")
    tok = load_tokenizer(str(tmp_path / "hf"))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258)
    assert tok.encode("ab ü").tolist() == ByteTokenizer().encode("ab ü").tolist()
    # Split special tokens: text spelling one is bytes in transformers, as in m1jax.
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok("<|eos|>", add_special_tokens=False)["input_ids"] == ByteTokenizer().encode("<|eos|>").tolist()
    save_hf(ours, tmp_path / "copy", tokenizer=str(tmp_path / "hf"))  # a tokenizer directory: copied
    assert (tmp_path / "copy" / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    small = nnx.eval_shape(lambda: MiniMaxM1(ModelConfig.tiny(vocab_size=128), rngs=nnx.Rngs(0)))  # no weights needed
    with pytest.raises(ValueError, match="258 tokens, more than the model's vocab_size=128"):
        save_hf(small, tmp_path / "bad", tokenizer="bytes")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        save_hf(ours, tmp_path / "bad", tokenizer=str(tmp_path / "nowhere"))
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob("bad.partial*"))
