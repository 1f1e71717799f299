"""Check the model's cached generation paths on a GPU, where they differ from the CPU's: exit non-zero on failure.

    PYTHONUNBUFFERED=1 python3 experiments/check_gpu_model.py [--out results.md]       # GPU, bf16
    JAX_PLATFORMS=cpu python3 experiments/check_gpu_model.py --small                  # CPU: checks the script

On a GPU with 16-bit activations the model's cached paths are not the ones the CPU tests run:
  * the prefill of left-padded rows runs cuDNN (jax.nn.dot_product_attention, implementation="cudnn") on rows
    rotated past their padding, with key_value_seq_lengths instead of a mask (SoftmaxAttention._sdpa_left_padded);
  * a one-token decode step runs pallas_kernels.decode_attention's split-K Triton kernel over each row's valid
    cache slots (decode_impl="auto").
Checks, on a random bf16 model (4 layers L S L S, 4 heads x 128, 2 kv heads, 4 experts top-2; --small: the tiny
test shape) and left-padded ragged prompts:
  1. "prefill": the cached prefill's next-token logits with softmax="sdpa" (cuDNN + rotation) vs "einsum" (the
     masked XLA scores), same model and inputs;
  2. "decode": a decode step's logits after that prefill with decode="auto" (the kernel) vs decode="xla";
  3. "cached vs full": prefill + 7 decode steps (every path on "auto") vs each row's full forward over its own
     tokens (no padding, no cache).
Errors: relative Frobenius over the logits of all rows and steps (bf16 rounding, chunked vs recurrent lightning and
other reduction orders: ~1e-2; a near-tied top-2 routing can flip under rounding, hence the looser bound on 3).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from experiments.gpu_check_record import finish, guarded, record  # noqa: E402
from m1jax import MiniMaxM1, ModelConfig  # noqa: E402
from m1jax.train.step import set_kernels  # noqa: E402

STEPS = 8  # the prefill's next token, then STEPS - 1 decode steps


def build(small: bool) -> MiniMaxM1:
    shape = {} if small else dict(hidden_size=512, intermediate_size=768, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=128, rotary_dim=64, vocab_size=1024,
                                  block_size=64, max_position_embeddings=4096)
    config = ModelConfig.tiny(dtype="bfloat16", param_dtype="bfloat16", **shape)
    return MiniMaxM1(config, rngs=nnx.Rngs(0))


def ragged_batch(rng, vocab: int, lengths, width: int):
    seqs = [rng.integers(1, vocab, n + STEPS) for n in lengths]
    tokens = np.zeros((len(lengths), width), np.int32)
    for r, n in enumerate(lengths):
        tokens[r, width - n:] = seqs[r][:n]
    return seqs, jnp.asarray(tokens), jnp.asarray([width - n for n in lengths], jnp.int32)


def run_cached(model, tokens, start, seqs, lengths, max_len: int, steps: int):
    """Logits [rows, steps, vocab] (fp32): the prefill's last position, then teacher-forced decode steps."""
    prefill = nnx.jit(lambda m, t, c: m.forward(t, cache=c, cache_empty=True, logits_slice=(t.shape[1] - 1,
                                                                                            t.shape[1])))
    step = nnx.jit(lambda m, t, c: m.forward(t, cache=c))
    out = prefill(model, tokens, model.init_cache(tokens.shape[0], max_len, start=start))
    got, cache = [out.logits[:, -1]], out.cache
    for t in range(steps - 1):
        nxt = jnp.asarray([[s[n + t]] for s, n in zip(seqs, lengths, strict=True)], jnp.int32)
        out = step(model, nxt, cache)
        got.append(out.logits[:, 0])
        cache = out.cache
    return jnp.stack(got, 1).astype(jnp.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="the tiny test shape (a CPU: XLA sdpa, interpret kernel)")
    ap.add_argument("--out", default=None, help="write the markdown summary here")
    args = ap.parse_args()
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}); jax {jax.__version__}")
    model = build(args.small)
    c = model.config
    lengths, width = ((5, 12, 16), 16) if args.small else ((37, 300, 512, 129), 512)
    max_len = 64 if args.small else 1024
    rng = np.random.default_rng()
    seqs, tokens, start = ragged_batch(rng, c.vocab_size, lengths, width)
    attn = next(layer.self_attn for layer in model.layers if not layer.is_lightning)
    kernel = attn.decode_kernel((len(lengths), attn.num_heads, attn.head_dim),
                                (len(lengths), max_len, attn.num_kv_heads, attn.head_dim))
    print(f"decode path on auto: {kernel or 'xla'}; softmax prefill on auto: "
          f"{'sdpa' if attn._use_sdpa() else 'einsum'}")
    shape = f"rows {list(lengths)} in {width}, cache {max_len}"
    forced = {} if dev.platform == "gpu" else {"decode": "triton", "softmax": "sdpa"}  # a CPU: the same code paths

    def paths(**kw):
        set_kernels(model, **{**forced, **kw})
        try:
            return run_cached(model, tokens, start, seqs, lengths, max_len, 2)
        finally:
            set_kernels(model)

    def prefill_check():
        record("prefill sdpa vs einsum", shape, "logits", paths(softmax=forced.get("softmax", "auto"))[:, 0],
               paths(softmax="einsum")[:, 0], 2e-2)

    def decode_check():
        record("decode kernel vs xla", shape, "logits", paths(decode=forced.get("decode", "auto"))[:, 1],
               paths(decode="xla")[:, 1], 2e-2)

    def full_check():
        set_kernels(model, **forced)
        try:
            got = run_cached(model, tokens, start, seqs, lengths, max_len, STEPS)
            full = nnx.jit(lambda m, t: m.forward(t).logits.astype(jnp.float32))
            ref = jnp.stack([full(model, jnp.asarray(s[None, : n + STEPS - 1]))[0, n - 1:]
                             for s, n in zip(seqs, lengths, strict=True)])
        finally:
            set_kernels(model)
        record("cached vs full forward", shape, "logits", got, ref, 5e-2)

    for name, fn in (("prefill", prefill_check), ("decode", decode_check), ("cached vs full", full_check)):
        guarded(name, fn)
    finish(f"device: {dev.device_kind}; jax {jax.__version__}", args.out)

if __name__ == "__main__":
    main()
