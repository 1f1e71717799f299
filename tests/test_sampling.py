"""The rollout engine (m1jax.sampling.sample): ragged prompts, exact log-probs, stopping, early truncation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m1jax import MiniMaxM1, ModelConfig
from m1jax.model.logprobs import token_logprobs
from m1jax.sampling import prompt_bucket, sample
from tests.conftest import jit_logits
from tests.test_model import randomize

T = 10  # new tokens in most tests: one decode program shape shared by most of them


@pytest.fixture(scope="module")
def model():
    # Both layer types, softmax layers with partial RoPE, lightning block 8 < prompt lengths.
    config = ModelConfig.tiny(rotary_dim=6, num_hidden_layers=4, attn_type_list=(0, 1, 0, 1))
    return randomize(MiniMaxM1(config, rngs=nnx.Rngs(0)), 3)


def _prompts(rng, lengths):
    return [rng.integers(0, 128, n).tolist() for n in lengths]


def _teacher_forced(model, prompt, completion, temperature):
    """log p of each completion token from one full forward over prompt + completion (no cache)."""
    seq = jnp.asarray([list(prompt) + list(completion)])
    logits = jit_logits(model, seq)[0, len(prompt) - 1 : -1]
    return np.asarray(token_logprobs(logits, jnp.asarray(completion), temperature))


def test_ragged_batch_equals_each_prompt_alone(model, rng):
    prompts = _prompts(rng, (3, 17, 1, 9))  # buckets 16 and 32: the padding differs between calls
    batch = sample(model, prompts, jax.random.key(0), max_new_tokens=T, temperature=0.0, num_samples=2)
    assert batch.tokens.shape == (8, T) and batch.logprobs.dtype == jnp.float32
    for i, p in enumerate(prompts):
        alone = sample(model, [p], jax.random.key(0), max_new_tokens=T, temperature=0.0)
        for g in range(2):
            np.testing.assert_array_equal(batch.tokens[2 * i + g], alone.tokens[0])
            np.testing.assert_allclose(batch.logprobs[2 * i + g], alone.logprobs[0], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_logprobs_equal_teacher_forced_forward(model, rng, temperature):
    prompts = _prompts(rng, (5, 12))
    # top-k / top-p restrict what is drawn, never the reported log-probs (softmax(logits / T), untruncated).
    out = sample(model, prompts, jax.random.key(1), max_new_tokens=T, temperature=temperature, num_samples=3,
                 top_k=40 if temperature < 1 else 0, top_p=0.9 if temperature < 1 else 1.0)
    for r in range(6):
        ref = _teacher_forced(model, prompts[r // 3], np.asarray(out.tokens[r]), temperature)
        np.testing.assert_allclose(np.asarray(out.logprobs[r]), ref, atol=1e-4)
    assert len({tuple(np.asarray(out.tokens[r])) for r in range(3)}) > 1  # samples of one prompt differ


def test_greedy_samples_identical_and_top_k_one_is_greedy(model, rng):
    prompts = _prompts(rng, (6, 11))
    greedy = sample(model, prompts, jax.random.key(2), max_new_tokens=T, temperature=0.0, num_samples=3)
    for i in range(2):
        for g in range(1, 3):
            np.testing.assert_array_equal(greedy.tokens[3 * i + g], greedy.tokens[3 * i])
    top1 = sample(model, prompts, jax.random.key(5), max_new_tokens=T, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens[::3])
    ref = _teacher_forced(model, prompts[0], np.asarray(greedy.tokens[0]), 0.0)
    np.testing.assert_allclose(np.asarray(greedy.logprobs[0]), ref, atol=1e-4)  # T = 0: softmax(logits)


def test_stop_tokens_lengths_padding_and_early_exit(model, rng):
    prompts = _prompts(rng, (4, 8))
    free = sample(model, prompts, jax.random.key(3), max_new_tokens=T, temperature=0.0)
    assert np.all(np.asarray(free.lengths) == T) and int(free.steps) == T
    stop = int(free.tokens[0, 2])  # row 0 emits it at step 2 (maybe earlier too)
    first = [int(np.argmax(np.asarray(free.tokens[r]) == stop)) if stop in np.asarray(free.tokens[r]) else None
             for r in range(2)]
    out = sample(model, prompts, jax.random.key(3), max_new_tokens=T, temperature=0.0, stop_tokens=(stop, 127),
                 pad_id=5)
    for r in range(2):
        f = first[r]
        n = T if f is None else f + 1
        assert int(out.lengths[r]) == n and bool(out.stopped[r]) == (f is not None)
        np.testing.assert_array_equal(out.tokens[r, :n], free.tokens[r, :n])
        assert np.all(np.asarray(out.tokens[r, n:]) == 5) and np.all(np.asarray(out.logprobs[r, n:]) == 0)
    # The while_loop ends when the last row is done, not at max_new_tokens.
    assert int(out.steps) == int(np.max(np.asarray(out.lengths)))
    if all(f is not None for f in first):
        assert int(out.steps) < T


def test_early_truncation_fires_exactly_on_its_rule(model, rng):
    prompts = _prompts(rng, (5, 7, 9))
    free = sample(model, prompts, jax.random.key(4), max_new_tokens=T, temperature=0.0)
    logp = np.asarray(free.logprobs)
    p = float(np.exp(np.median(logp)))  # about half the tokens are "confident"
    n = 2
    out = sample(model, prompts, jax.random.key(4), max_new_tokens=T, temperature=0.0, truncate_after=n,
                 truncate_prob=p)
    fired = 0
    for r in range(3):
        run, expect = 0, T
        for t in range(T):
            run = run + 1 if logp[r, t] > math.log(p) else 0
            if run >= n:
                expect = t + 1
                break
        assert int(out.lengths[r]) == expect
        assert bool(out.truncated[r]) == (expect < T or run >= n)
        fired += expect < T
    assert fired  # the threshold made at least one row stop early


def test_bucket_and_bad_arguments(model):
    assert [prompt_bucket(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    ok = dict(max_new_tokens=4)
    bad = [
        (dict(prompts=[[1] * 510], max_new_tokens=4), "more than the cache"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=4, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=4, top_p=0.0), "top_p"),
        (dict(max_new_tokens=4, top_p=1.5), "top_p"),
        (dict(max_new_tokens=4, stop_tokens=(128,)), "stop token 128"),
        (dict(prompts=[[1, 2], []], **ok), "prompt 1"),
        (dict(prompts=[[1, 999]], **ok), "outside the vocabulary"),
        (dict(prompts=[], **ok), "non-empty"),
        (dict(num_samples=0, **ok), "num_samples"),
    ]
    for kw, match in bad:
        prompts = kw.pop("prompts", [[1, 2, 3]])
        with pytest.raises(ValueError, match=match):
            sample(model, prompts, jax.random.key(0), **kw)


# ---------------------------------------------------------------------------------------- continuous batching

FIELDS = ("tokens", "lengths", "stopped", "truncated")
STOPS = tuple(range(0, 128, 8))  # 1 token in 8: rows of the random model end after 1 to 10 steps


def _assert_same_rows(got, ref):
    for f in FIELDS:
        np.testing.assert_array_equal(np.asarray(got[f]), np.asarray(ref[f]), err_msg=f)
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(ref.logprobs), atol=1e-5)


def _slot_steps(lengths, slots, refill_min):
    """Decode iterations the slot engine runs for rows of these lengths, admitted in order (its host loop)."""
    left, nxt, steps = [0] * slots, 0, 0
    while True:
        for s in [s for s in range(slots) if not left[s]][: len(lengths) - nxt]:
            left[s], nxt = int(lengths[nxt]), nxt + 1
        pending = len(lengths) - nxt
        need = min(refill_min, pending) if pending else slots + 1
        while any(left) and left.count(0) < need:
            left, steps = [max(n - 1, 0) for n in left], steps + 1
        if not pending:
            return steps


def test_continuous_batching_greedy_equals_static_batch(model, rng):
    # Ragged prompts, stop tokens ending rows at very different steps, 8 rows through 3 slots. Bucket 16 and
    # T = 10 everywhere here: the slots' one- and two-prompt prefills are the programs other tests compile.
    prompts = _prompts(rng, (2, 16, 1, 11))
    kw = dict(max_new_tokens=T, temperature=0.0, num_samples=2, stop_tokens=STOPS)
    static = sample(model, prompts, jax.random.key(0), **kw)
    cont = sample(model, prompts, jax.random.key(0), batch_slots=3, **kw)
    _assert_same_rows(cont, static)
    lengths = np.asarray(static.lengths)
    assert lengths.min() <= 2 and lengths.max() >= 6, lengths  # rows of very different lengths
    # Slots were refilled as rows ended: exactly the host loop's step count, fewer than 3-row static batches.
    steps = _slot_steps(lengths, 3, 1)
    assert int(cont.steps) == steps < sum(lengths[i : i + 3].max() for i in range(0, 8, 3))


def test_continuous_batching_sampled_equals_static_batch(model, rng):
    # T = 1 with 3 samples per prompt: each row's keys fold_in(key, i, g, t) follow it into whichever slot.
    prompts = _prompts(rng, (5, 12, 3))
    kw = dict(max_new_tokens=T, temperature=1.0, num_samples=3, stop_tokens=STOPS)
    static = sample(model, prompts, jax.random.key(1), **kw)
    lengths = np.asarray(static.lengths)
    assert lengths.min() < lengths.max() and len({tuple(np.asarray(static.tokens[r])) for r in range(3)}) > 1
    for refill in (None, 3):  # refill_min changes the schedule (default 1 for 4 slots), never the results
        cont = sample(model, prompts, jax.random.key(1), batch_slots=4, refill_min=refill, **kw)
        _assert_same_rows(cont, static)
        assert int(cont.steps) == _slot_steps(lengths, 4, refill or 1)


def test_bad_batch_slots_and_overlong_contexts(model):
    bad = [
        (dict(batch_slots=0), "batch_slots must be an int >= 1"),
        (dict(batch_slots=-2), "batch_slots must be an int >= 1"),
        (dict(batch_slots=2.0), "batch_slots must be an int >= 1"),
        (dict(batch_slots=True), "batch_slots must be an int >= 1"),
        (dict(batch_slots=2, refill_min=3), "refill_min must be an int in \\[1, batch_slots=2\\]"),
        (dict(refill_min=1), "needs batch_slots"),
        # A context longer than the cache / max_position_embeddings (512): static and slots alike.
        (dict(prompts=[[1, 2], [1] * 500], max_new_tokens=13), "prompt 1 has 500 tokens.*max_position_embeddings=512"),
        (dict(prompts=[[1, 2], [1] * 500], max_new_tokens=13, batch_slots=1), "prompt 1 has 500 tokens"),
        (dict(prompts=[[1] * 60], max_len=64, max_new_tokens=5), "prompt 0 has 60 tokens.*max_len=64"),
        (dict(max_len=513), "max_len must be an int in \\[1, max_position_embeddings=512\\]"),
        (dict(max_len=0), "max_len must be"),
    ]
    for kw, match in bad:
        kw = {"max_new_tokens": 4, **kw}
        prompts = kw.pop("prompts", [[1, 2, 3], [4, 5]])
        with pytest.raises(ValueError, match=match) as err:
            sample(model, prompts, jax.random.key(0), **kw)
        assert "\n" not in str(err.value)
    # The model itself refuses a chunk longer than its cache (the write would be clamped: wrong logits).
    with pytest.raises(ValueError, match="40 tokens do not fit a cache of 32 slots"):
        model.forward(jnp.zeros((1, 40), jnp.int32), cache=model.init_cache(1, 32))


@pytest.mark.parametrize("kernel", ["triton", "tpu"])
def test_decode_kernel_path_equals_xla_path(model, rng, kernel):
    """The softmax layers' decode kernels (GPU split-K and TPU; interpret mode here) read only each row's valid
    slots: the same rows as the XLA path that scores the whole cache, static (left padding) and, for the GPU kernel,
    with slots (per-row index)."""
    from m1jax.train.step import set_kernels

    prompts = _prompts(rng, (2, 16, 1, 11))
    kw = dict(max_new_tokens=T, temperature=1.0, num_samples=2, stop_tokens=STOPS, max_len=64)
    ref = sample(model, prompts, jax.random.key(2), **kw)
    attn = next(layer.self_attn for layer in model.layers if not layer.is_lightning)
    try:
        set_kernels(model, decode=kernel)
        assert attn.decode_kernel((8, attn.num_heads, attn.head_dim), (8, 64, attn.num_kv_heads, attn.head_dim)) \
            == kernel
        for extra in ({}, {"batch_slots": 3}) if kernel == "triton" else ({},):
            _assert_same_rows(sample(model, prompts, jax.random.key(2), **kw, **extra), ref)
    finally:
        set_kernels(model, decode="auto")
    assert attn.decode_kernel((8, attn.num_heads, attn.head_dim), (8, 64, attn.num_kv_heads, attn.head_dim)) is None


def test_prefill_memory_grows_with_the_prompt_not_the_cache():
    """The compiled prefill's scratch memory (XLA's memory analysis; the cache itself is the output) is the same
    for a 256-token prompt into a 1K or a 16K cache, and grows with the prompt."""
    from m1jax.sampling import _prefill

    cfg = ModelConfig.tiny(num_hidden_layers=2, attn_type_list=(0, 1), max_position_embeddings=16384)
    graphdef, state = nnx.split(MiniMaxM1(cfg, rngs=nnx.Rngs(0)))

    def temp(n, max_len):
        tokens, start = jnp.zeros((2, n), jnp.int32), jnp.zeros((2,), jnp.int32)
        compiled = _prefill.lower(graphdef, state, tokens, start, max_len=max_len, num_samples=1).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small = temp(256, 1024)
    assert temp(256, 16384) <= 1.01 * small
    assert temp(1024, 16384) > 2 * small
