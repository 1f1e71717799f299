"""`m1jax generate`: sample from a model (random init or a Hugging Face checkpoint) and check the cache."""

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
from m1jax.sampling import generate


def model_from_config(cfg) -> MiniMaxM1:
    """A model from ``cfg.model`` fields, loaded from ``cfg.checkpoint`` (HF directory) when set."""
    if cfg.get("checkpoint"):
        from m1jax.convert import load_hf

        return load_hf(cfg.checkpoint)
    return MiniMaxM1(ModelConfig.from_dict(cfg.model.to_dict()), rngs=nnx.Rngs(cfg.seed))


def main(cfg, workdir: str | None) -> dict:
    model = model_from_config(cfg)
    c = model.config
    key = jax.random.PRNGKey(cfg.seed)
    prompt = jax.random.randint(key, (cfg.batch_size, cfg.prompt_len), 0, c.vocab_size)
    gen = cfg.max_new_tokens
    tokens, logps = generate(model, prompt, key, max_new_tokens=gen, temperature=cfg.temperature)
    jax.block_until_ready(tokens)
    start = time.perf_counter()
    tokens, logps = generate(model, prompt, key, max_new_tokens=gen, temperature=cfg.temperature)
    jax.block_until_ready(tokens)
    seconds = time.perf_counter() - start

    # The cache must reproduce a full forward over prompt + completion.
    full = nnx.jit(lambda m, t: m(t))(model, jnp.concatenate([prompt, tokens], 1))
    full_logp = jax.nn.log_softmax(full[:, cfg.prompt_len - 1 : -1], -1)
    full_logp = jnp.take_along_axis(full_logp, tokens[..., None], -1)[..., 0]
    mismatch = float(jnp.max(jnp.abs(full_logp - logps)))
    result = {
        "model_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "layers": "".join("L" if c.is_lightning(i) else "F" for i in range(c.num_hidden_layers)),
        "batch": cfg.batch_size, "prompt_len": cfg.prompt_len, "new_tokens": gen,
        "tokens_per_s": cfg.batch_size * gen / seconds,
        "cache_vs_full_forward_max_logprob_diff": mismatch,
        "backend": jax.default_backend(),
        "first_completion": np.asarray(tokens[0]).tolist(),
    }
    print(json.dumps(result))
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=1))
        with open(os.path.join(workdir, "generate.json"), "w") as f:
            json.dump(result, f, indent=1)
    if mismatch > cfg.max_logprob_diff:
        raise SystemExit(
            f"decode with the cache disagrees with the full forward: {mismatch:.3g} > {cfg.max_logprob_diff}"
        )
    return result
