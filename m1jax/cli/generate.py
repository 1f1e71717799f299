"""`m1jax generate`: sample text from a model (random init, a training run, an orbax or a Hugging Face checkpoint).

    m1jax generate --config=experiments/tiny.py:smoke                            # random model, random prompts
    m1jax generate --config=experiments/tiny.py --config.checkpoint=/runs/rl --config.prompt='12+34='

With ``prompt`` set (one string, or several separated by ``config.prompt_separator``), each prompt is
encoded with ``config.tokenizer`` (BOS first when the tokenizer has one), sampled with
m1jax.sampling.sample until EOS or ``max_new_tokens``, and printed decoded. Without it, random prompts
are sampled and the cached decode is checked against a full forward pass (the smoke test).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m1jax.config import ModelConfig
from m1jax.model import MiniMaxM1
from m1jax.model.logprobs import token_logprobs
from m1jax.sampling import sample


def load_model(checkpoint: str, config: ModelConfig | None = None) -> MiniMaxM1:
    """A model from a Hugging Face directory (config.json + safetensors), an orbax params / training
    checkpoint, or a training / RL workdir (its latest checkpoint)."""
    path = os.path.abspath(os.path.expanduser(checkpoint))
    if not os.path.exists(path):
        raise ValueError(f"config.checkpoint={checkpoint!r} does not exist")
    if os.path.isfile(os.path.join(path, "config.json")) and any(
            f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in os.listdir(path)):
        from m1jax.convert import load_hf

        return load_hf(path)
    from m1jax.train.checkpoint import resolve_checkpoint, restore_params

    try:
        return restore_params(resolve_checkpoint(path), config)
    except FileNotFoundError as e:
        raise ValueError(f"config.checkpoint={checkpoint!r}: neither a Hugging Face directory nor an m1jax "
                         f"checkpoint or workdir ({e})") from None


def model_from_config(cfg) -> MiniMaxM1:
    """``cfg.checkpoint`` when set, else a random model of ``cfg.model``."""
    if cfg.get("checkpoint"):
        return load_model(cfg.checkpoint)
    return MiniMaxM1(ModelConfig.from_dict(cfg.model.to_dict()), rngs=nnx.Rngs(cfg.seed))


def _prompts(cfg) -> list[str]:
    text = cfg.get("prompt", "") or ""
    sep = cfg.get("prompt_separator", "|")
    return [p for p in text.split(sep)] if text else []


def generate_text(model: MiniMaxM1, prompts: list[str], tokenizer, key, **sampling) -> list[dict]:
    """Encode ``prompts``, sample (stopping at the tokenizer's EOS), decode: one dict per sample."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    ids = [bos + tokenizer.encode(p).tolist() for p in prompts]
    if tokenizer.eos_id is not None:
        sampling.setdefault("stop_tokens", (tokenizer.eos_id,))
    out = sample(model, ids, key, **sampling)
    g = out.num_samples
    return [{"prompt": prompts[r // g], "sample": r % g, "text": tokenizer.decode(out.completion(r)),
             "tokens": int(out.lengths[r]), "stopped": bool(out.stopped[r])} for r in range(len(ids) * g)]


def main(cfg, workdir: str | None) -> dict:
    from m1jax.data.tokenizer import load_tokenizer

    model = model_from_config(cfg)
    c = model.config
    key = jax.random.key(cfg.seed)
    settings = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.get("top_k", 0),
                    top_p=cfg.get("top_p", 1.0), num_samples=cfg.get("num_samples", 1),
                    batch_slots=cfg.get("batch_slots", 0) or None)
    texts = _prompts(cfg)
    if texts:
        tokenizer = load_tokenizer(cfg.get("tokenizer", "bytes"))
        if tokenizer.vocab_size > c.vocab_size:
            raise ValueError(f"config.tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                             f"vocab_size {c.vocab_size}")
        results = generate_text(model, texts, tokenizer, key, **settings)
        for r in results:
            print(f"[{r['sample']}] {r['prompt']}{r['text']}" + ("" if r["stopped"] else "  <no EOS>"))
        result = {"samples": results}
        _write(cfg, workdir, result)
        return result

    rng = np.random.default_rng(cfg.seed)
    prompts = [rng.integers(0, c.vocab_size, cfg.prompt_len).tolist() for _ in range(cfg.batch_size)]
    out = sample(model, prompts, key, **settings)
    jax.block_until_ready(out.tokens)
    start = time.perf_counter()
    out = sample(model, prompts, key, **settings)
    jax.block_until_ready(out.tokens)
    seconds = time.perf_counter() - start

    # The cache must reproduce a full forward over prompt + completion.
    seq = jnp.concatenate([jnp.asarray(prompts), out.tokens[:: out.num_samples]], 1)
    full = nnx.jit(lambda m, t: m(t))(model, seq)
    temperature = cfg.temperature
    full_logp = token_logprobs(full[:, cfg.prompt_len - 1: -1], out.tokens[:: out.num_samples], temperature)
    mismatch = float(jnp.max(jnp.abs(full_logp - out.logprobs[:: out.num_samples])))
    result = {
        "model_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "layers": "".join("L" if c.is_lightning(i) else "F" for i in range(c.num_hidden_layers)),
        "batch": cfg.batch_size, "prompt_len": cfg.prompt_len, "new_tokens": cfg.max_new_tokens,
        "tokens_per_s": int(np.sum(np.asarray(out.lengths))) / seconds,
        "cache_vs_full_forward_max_logprob_diff": mismatch,
        "backend": jax.default_backend(),
        "first_completion": np.asarray(out.tokens[0]).tolist(),
    }
    print(json.dumps(result))
    _write(cfg, workdir, result)
    if mismatch > cfg.max_logprob_diff:
        raise SystemExit(
            f"decode with the cache disagrees with the full forward: {mismatch:.3g} > {cfg.max_logprob_diff}"
        )
    return result


def _write(cfg, workdir, result):
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=1))
        with open(os.path.join(workdir, "generate.json"), "w") as f:
            json.dump(result, f, indent=1)
