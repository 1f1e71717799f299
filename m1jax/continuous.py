"""Continuous batching for the rollout engine: K decode slots, each refilled with the next row when its row ends.

``sample(..., batch_slots=K)`` with more rows (prompts x num_samples) than K runs ``sample_in_slots``:

  slots    a cache of K rows shaped like the static batch's (cache_length(B + max_new_tokens) slots) with a
           per-row cache index, plus per slot: the row it holds, that row's PRNG key, its step, its early-
           truncation run, its next-token logits, done. Results go straight into [rows, max_new_tokens]
           output arrays on the device (a K-element scatter per step).
  decode   ``_decode_slots``: a ``lax.while_loop`` stepping every slot (the static loop's body, with a step
           per slot) until ``need`` slots have ended (rows still pending) or every slot has (none pending).
           Slot state and outputs are donated: updated in place, and the host syncs once per exit (to read
           which slots ended), never per token.
  refill   the next rows' prompts (each distinct prompt once) run through the static path's ``_prefill`` in
           the static bucket B, then ``_admit`` scatters them into the ended slots: KV rows (the prefill's own
           rows: the prompt, zeros after it), lightning states (the prompt's, so the old row's state is gone),
           start, index B, logits, key, step 0. ``_prefill`` compiles once per power-of-two count of prompts
           (<= K), ``_admit`` (a gather + scatter) once per (prompts, rows) bucket, ``_decode_slots`` once.

Why the results equal the static batch's, row for row: a row's prompt sits in the same bucket B with the same
left padding (so the same positions / RoPE and the same lightning block alignment), its cache has the same
length (cache_length(B + T)), it decodes at the same slot indices B + t, and its step-t key is
fold_in(key, i, g, t) in both. Slots hold nothing from an earlier row that a valid query can see (the refill
writes the whole KV row and state). What can differ is float rounding that depends on the batch size (K rows
instead of all of them): with fp32 on CPU the tests see equal tokens and log-probs within 1e-5; on GPU (bf16,
other matmul tilings) a near-tie can flip a sampled token, as it can between two static batches of different
sizes.

Scheduling never changes results, only speed: ``refill_min`` (default max(1, K // 8)) trades slots left idle
until enough have ended against one host round trip + prefill per exit.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from m1jax.model.cache import Cache, init_cache
from m1jax.sampling import SamplingSettings, _prefill, cache_length, merge, pick


def default_refill_min(slots: int) -> int:
    """Refill once this many slots have ended (while rows are pending): ~K/8 balances idle slots and round trips."""
    return max(1, slots // 8)


def _bucket(n: int, cap: int) -> int:
    """Power-of-two count (compile key) for n rows, at most cap."""
    return min(1 << (n - 1).bit_length(), cap)


def sample_in_slots(graphdef, state, config, tokens: np.ndarray, start: np.ndarray, key_data,
                    settings: SamplingSettings, num_samples: int, *, slots: int, refill_min: int,
                    limit: int) -> tuple:
    """Left-padded prompts tokens [P, B] (start [P]: padding per row), raw key data -> the static ``_decode``'s
    outputs (tokens, logprobs, lengths, stopped, truncated, steps), decoding ``slots`` rows at once.

    Rows are prompt-major (row r = sample r % G of prompt r // G) and are admitted in that order; steps is
    the number of decode iterations run over all exits. ``limit`` bounds the cache length (sampling.cache_length).
    """
    P, B = tokens.shape
    G, K, T = num_samples, slots, settings.max_new_tokens
    R, S = P * G, cache_length(B + T, limit)
    slot_state = _empty_slots(config, K, S)
    out = _empty_outputs(R, T, settings.pad_id)
    done = np.ones(K, bool)  # host view of which slots may take a row (all, at first)
    nxt = 0
    while True:
        free = np.flatnonzero(done)[: R - nxt]
        if free.size:
            slot_state = _refill(graphdef, state, slot_state, tokens, start, key_data, nxt, free, K=K, R=R, G=G, S=S)
            nxt += free.size
        pending = R - nxt
        need = min(refill_min, pending) if pending else K + 1  # K + 1: run until every slot has ended
        slot_state, out = _decode_slots(graphdef, state, slot_state, out, np.int32(need), settings=settings)
        if not pending:
            break
        done = np.asarray(slot_state["done"])  # the one host sync per exit
    return (out["tokens"], out["logprobs"], out["lengths"], out["stopped"], out["truncated"],
            slot_state["steps"])


def _refill(graphdef, state, slot_state, tokens, start, key_data, first: int, dst: np.ndarray, *, K, R, G, S):
    """Rows first .. first + len(dst) - 1 into slots dst: their distinct prompts prefilled once, then scattered."""
    rows = np.arange(first, first + dst.size)
    prompts = np.unique(rows // G)  # consecutive rows: a contiguous range of prompts
    pb, rb = _bucket(prompts.size, K), _bucket(rows.size, K)
    B = tokens.shape[1]
    tok = np.zeros((pb, B), np.int32)  # unused prompt rows: token 0 everywhere, never admitted
    st = np.zeros((pb,), np.int32)
    tok[: prompts.size], st[: prompts.size] = tokens[prompts], start[prompts]
    cache, logits = _prefill(graphdef, state, tok, st, max_len=S, num_samples=1)
    src = np.zeros((rb,), np.int32)
    src[: rows.size] = rows // G - prompts[0]
    to = np.full((rb,), K, np.int32)  # slot K: out of range, dropped by the scatter
    to[: rows.size] = dst
    ids = np.full((rb,), R, np.int32)
    ids[: rows.size] = rows
    return _admit(slot_state, cache, logits, src, to, ids, key_data, num_samples=G)  # numpy: jit's fast path


def _empty_slots(config, K: int, S: int) -> dict:
    """K empty slots (done, holding no row) with a zero cache of S slots and a per-row index."""
    cache = init_cache(config, K, S)
    return {
        "cache": cache.replace(index=jnp.zeros((K,), jnp.int32)),
        "logits": jnp.zeros((K, config.vocab_size), jnp.float32), "key": jnp.zeros((K, 2), jnp.uint32),
        "row": jnp.zeros((K,), jnp.int32), "t": jnp.zeros((K,), jnp.int32), "run": jnp.zeros((K,), jnp.int32),
        "done": jnp.ones((K,), bool), "steps": jnp.zeros((), jnp.int32),
    }


def _empty_outputs(R: int, T: int, pad_id: int) -> dict:
    return {
        "tokens": jnp.full((R, T), pad_id, jnp.int32), "logprobs": jnp.zeros((R, T), jnp.float32),
        "lengths": jnp.zeros((R,), jnp.int32), "stopped": jnp.zeros((R,), bool), "truncated": jnp.zeros((R,), bool),
    }


@functools.partial(jax.jit, static_argnames=("num_samples",), donate_argnames=("slots",))
def _admit(slots, cache: Cache, logits, src, dst, rows, key, *, num_samples: int):
    """Slot dst[j] takes row rows[j] (prefilled as cache row src[j]); dst == K entries are padding, dropped."""
    base = jax.random.wrap_key_data(key)
    keys = jax.vmap(lambda r: jax.random.key_data(
        jax.random.fold_in(jax.random.fold_in(base, r // num_samples), r % num_samples)))(rows)

    def put(a, b):  # slot rows dst <- prefill rows src
        return a.at[dst].set(b[src], mode="drop")

    old = slots["cache"]
    new_cache = Cache(index=old.index.at[dst].set(cache.index, mode="drop"), start=put(old.start, cache.start),
                      layers=jax.tree.map(put, old.layers, cache.layers))
    zeros = jnp.zeros(dst.shape, jnp.int32)
    return {
        "cache": new_cache, "logits": put(slots["logits"], logits),
        "key": slots["key"].at[dst].set(keys, mode="drop"), "row": slots["row"].at[dst].set(rows, mode="drop"),
        "t": slots["t"].at[dst].set(zeros, mode="drop"), "run": slots["run"].at[dst].set(zeros, mode="drop"),
        "done": slots["done"].at[dst].set(False, mode="drop"), "steps": slots["steps"],
    }


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"), donate_argnames=("slots", "out"))
def _decode_slots(graphdef, state, slots, out, need, *, settings: SamplingSettings):
    """Step every slot until ``need`` slots have ended (> K: until all have) -> (slots, out).

    The body is the static ``_decode``'s with a step count per slot: same keys, same stop / truncation
    rules, tokens and log-probs written at (row, step) of the outputs (rows of ended slots are dropped).
    """
    model = merge(graphdef, state)
    T, R = settings.max_new_tokens, out["lengths"].shape[0]
    stops = jnp.asarray(settings.stop_tokens or (-1,), jnp.int32)
    log_p_min = math.log(settings.truncate_prob)

    def cond(c):
        s = c[0]
        return jnp.any(~s["done"]) & (jnp.sum(s["done"]) < need)

    def body(c):
        s, o = c
        t, active = s["t"], ~s["done"]
        step_keys = jax.vmap(lambda k, i: jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(k), i)))(
            s["key"], t)
        tok, logp = pick(s["logits"], step_keys, settings)
        tok = jnp.where(active, tok, settings.pad_id)
        logp = jnp.where(active, logp, 0.0)
        stopped = active & jnp.any(tok[:, None] == stops[None, :], axis=-1) if settings.stop_tokens else ~active & False
        run = jnp.where(active & (logp > log_p_min), s["run"] + 1, 0)
        truncated = active & (run >= settings.truncate_after) if settings.truncate_after else ~active & False
        fwd = model.forward(tok[:, None], cache=s["cache"])
        cache = fwd.cache.replace(index=jnp.where(active, fwd.cache.index, s["cache"].index))  # ended: frozen
        t_next = t + active.astype(jnp.int32)
        row = jnp.where(active, s["row"], R)  # R: out of range, dropped
        o = {
            "tokens": o["tokens"].at[row, t].set(tok, mode="drop"),
            "logprobs": o["logprobs"].at[row, t].set(logp, mode="drop"),
            "lengths": o["lengths"].at[row].set(t_next, mode="drop"),
            "stopped": o["stopped"].at[row].set(stopped, mode="drop"),
            "truncated": o["truncated"].at[row].set(truncated, mode="drop"),
        }
        s = {**s, "cache": cache, "logits": fwd.logits[:, -1], "t": t_next, "run": run,
             "done": s["done"] | stopped | truncated | (t_next >= T), "steps": s["steps"] + 1}
        return s, o

    return jax.lax.while_loop(cond, body, (slots, out))
