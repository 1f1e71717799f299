"""The rollout engine: ragged prompts, G samples per prompt, stop tokens, top-k / top-p, early truncation.

``sample(model, prompts, key, max_new_tokens=...)`` runs two jitted programs:

  prefill  the P prompts LEFT-padded to a length bucket (powers of two from 16), each row's padding
           marked in the cache (``Cache.start``) so that it never reaches a valid token; attention
           within the prompt only; the LM head on the last position only. Each prompt's cache is then
           repeated for its G samples (rows prompt-major: rows i*G .. i*G+G-1 are prompt i's).
  decode   a ``lax.while_loop`` over steps that stops as soon as every row is done (stop token, early
           truncation or max_new_tokens); the cache is donated; tokens, log-probs and lengths stay on
           the device until the end (no host round trip per token).

Both compile once per shape bucket (prompts, prompt bucket, G, max_new_tokens, sampling settings).
With ``batch_slots=K`` and more rows than K, rows go through K decode slots instead (continuous batching,
m1jax.continuous): the same prefill per prompt, bucket and keys, so the same results row for row.
Randomness: row i*G + g draws step t from fold_in(fold_in(fold_in(key, i), g), t), so a row's tokens
depend only on its prompt, its (i, g) and the parameters, never on the other rows or the padding.

Log-probs: ``logprobs[r, t]`` is log p(token) under softmax(logits / temperature) BEFORE any top-k / top-p
truncation (the distribution the RL learner recomputes); with temperature 0 (greedy) it is the
log-prob under softmax(logits).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m1jax.model.attention import DECODE_BLOCK
from m1jax.model.logprobs import scaled_log_softmax


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """The static settings of one decode program (hashable: part of the compile key)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0
    truncate_after: int = 0  # M1's early truncation: N consecutive tokens ...
    truncate_prob: float = 0.99  # ... each with probability > this (0 = off)


@dataclasses.dataclass
class SampleOutput:
    """Results, rows prompt-major (row i*G + g is sample g of prompt i); also readable as out["tokens"].

    tokens [rows, max_new_tokens] int32 (pad_id after a row's end); logprobs [rows, max_new_tokens] fp32
    (0 after the end); lengths [rows] int32 (tokens generated, a stop token counted); stopped [rows]
    (ended on a stop token); truncated [rows] (ended by early truncation); steps: decode iterations run.
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array
    truncated: jax.Array
    steps: jax.Array
    prompt_lengths: np.ndarray
    num_samples: int

    def __getitem__(self, key: str):
        return getattr(self, key)

    def completion(self, row: int) -> np.ndarray:
        """Row ``row``'s generated tokens, up to its length."""
        return np.asarray(self.tokens[row, : int(self.lengths[row])])


def prompt_bucket(length: int) -> int:
    """The padded prompt length that ``length`` compiles under: the next power of two, at least 16."""
    return max(16, 1 << (int(length) - 1).bit_length())


def _split(model):
    """A MiniMaxM1 -> (graphdef, state); a (graphdef, state) pair passes through (the RL learner's params)."""
    if isinstance(model, tuple):
        return model
    return nnx.split(model)


class _Graph:
    """A graphdef as a jit static argument: hashed once, compared by identity first.

    nnx's GraphDef rehashes its whole node list at every jitted call (~1 ms for a 16-layer model); the slot
    engine calls its programs at every refill, so ``sample`` passes the interned ``_static_graph`` instead.
    """

    __slots__ = ("graphdef", "_hash")

    def __init__(self, graphdef, h: int):
        self.graphdef, self._hash = graphdef, h

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return self is other or (isinstance(other, _Graph) and self.graphdef == other.graphdef)


_GRAPHS: dict[int, list[_Graph]] = {}


def _static_graph(graphdef) -> _Graph:
    """The one _Graph of all graphdefs equal to this one (so jit's cache lookups hit by identity)."""
    h = hash(graphdef)
    for g in _GRAPHS.setdefault(h, []):
        if g.graphdef == graphdef:
            return g
    _GRAPHS[h].append(g := _Graph(graphdef, h))
    return g


def merge(graphdef, state):
    """nnx.merge for a graphdef or its _Graph."""
    return nnx.merge(graphdef.graphdef if isinstance(graphdef, _Graph) else graphdef, state)


def sample(model, prompts, key, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, stop_tokens=(), num_samples: int = 1, pad_id: int = 0, truncate_after: int = 0,
           truncate_prob: float = 0.99, max_len: int | None = None, batch_slots: int | None = None,
           refill_min: int | None = None) -> SampleOutput:
    """Sample ``num_samples`` completions of each prompt (token-id lists of any lengths).

    model: a MiniMaxM1, or (graphdef, state) from nnx.split (e.g. the RL learner's live parameters: they
    are read in place, on whatever devices / mesh they live). key: a PRNG key. temperature 0 is greedy;
    top_k 0 and top_p 1 are off. stop_tokens end a row (the stop token is kept and counted in its
    length). Early truncation (M1 report §4): with truncate_after = N > 0, a row stops after N
    consecutive tokens each sampled with probability > truncate_prob. max_len bounds prompt +
    completion (default, and at most, the model's max_position_embeddings). batch_slots = K (None: all
    rows at once): with more rows than K, decode K rows at a time and give a row's slot to the next row
    as soon as it ends (continuous batching, m1jax.continuous); every row's result is the one the
    static batch gives (same keys, positions and cache layout). refill_min: with batch_slots, refill
    once this many slots have ended (default max(1, K // 8); speed only, never results). Bad arguments
    raise ValueError before any work. Returns a SampleOutput.
    """
    config = model.config if hasattr(model, "config") else nnx.merge(*model).config
    graphdef, state = _split(model)
    graphdef = _static_graph(graphdef)
    settings, lengths = _validate(config, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, num_samples,
                                  pad_id, truncate_after, truncate_prob, max_len)
    slots = _validate_slots(batch_slots, refill_min)
    limit = int(max_len or config.max_position_embeddings)
    bucket = max(int(lengths.max()), min(prompt_bucket(int(lengths.max())), limit - max_new_tokens))
    tokens = np.full((len(lengths), bucket), settings.pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, bucket - len(p):] = np.asarray(p, np.int32)
    start = (bucket - lengths).astype(np.int32)
    if slots is not None and slots[0] < len(lengths) * num_samples:
        from m1jax.continuous import default_refill_min, sample_in_slots

        K, refill = slots[0], slots[1] or default_refill_min(slots[0])
        out = sample_in_slots(graphdef, state, config, tokens, start, _key_data(key), settings, num_samples,
                              slots=K, refill_min=refill, limit=limit)
    else:
        cache, logits = _prefill(graphdef, state, jnp.asarray(tokens), jnp.asarray(start),
                                 max_len=cache_length(bucket + max_new_tokens, limit), num_samples=num_samples)
        out, _ = _decode(graphdef, state, cache, logits, _key_data(key), settings=settings, num_samples=num_samples)
    toks, logps, lens, stopped, truncated, steps = out
    return SampleOutput(tokens=toks, logprobs=logps, lengths=lens, stopped=stopped, truncated=truncated, steps=steps,
                        prompt_lengths=lengths, num_samples=num_samples)


CACHE_ALIGN = DECODE_BLOCK  # cache slots are allocated in multiples of the decode kernel's block, within the limit


def cache_length(needed: int, limit: int) -> int:
    """KV-cache slots for ``needed`` positions: rounded up to CACHE_ALIGN unless that passes ``limit`` (the
    position limit); slots past the last written one are never attended to, so results do not depend on it."""
    aligned = -(-needed // CACHE_ALIGN) * CACHE_ALIGN
    return aligned if aligned <= limit else needed


def _key_data(key):
    """Typed or raw PRNG keys -> raw uint32 key data (a stable jit argument)."""
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _validate_slots(batch_slots, refill_min):
    """-> None (static batch) or (K, refill_min or None)."""
    if batch_slots is None:
        if refill_min is not None:
            raise ValueError(f"refill_min={refill_min!r} needs batch_slots (continuous batching)")
        return None
    if not _is_int(batch_slots) or batch_slots < 1:
        raise ValueError(f"batch_slots must be an int >= 1 (None: every row at once), got {batch_slots!r}")
    if refill_min is not None and (not _is_int(refill_min) or not 1 <= refill_min <= batch_slots):
        raise ValueError(f"refill_min must be an int in [1, batch_slots={batch_slots}], got {refill_min!r}")
    return int(batch_slots), None if refill_min is None else int(refill_min)


def _validate(config, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, num_samples, pad_id,
              truncate_after, truncate_prob, max_len):
    vocab = config.vocab_size
    is_int = _is_int
    if not is_int(max_new_tokens) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not is_int(top_k) or not 0 <= top_k <= vocab:
        raise ValueError(f"top_k must be an int in [0, vocab_size={vocab}] (0 = off), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")
    if not is_int(num_samples) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    stop_tokens = tuple(stop_tokens if isinstance(stop_tokens, (list, tuple)) else (stop_tokens,))
    for t in stop_tokens + (pad_id,):
        if not is_int(t) or not 0 <= t < vocab:
            what = "pad_id" if t is pad_id and t not in stop_tokens else "stop token"
            raise ValueError(f"{what} {t!r} is outside the vocabulary [0, {vocab})")
    if not is_int(truncate_after) or truncate_after < 0:
        raise ValueError(f"truncate_after must be an int >= 0 (0 = off), got {truncate_after!r}")
    if not 0 < truncate_prob < 1:
        raise ValueError(f"truncate_prob must be in (0, 1), got {truncate_prob!r}")
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    positions = config.max_position_embeddings
    if max_len is not None and (not is_int(max_len) or not 0 < max_len <= positions):
        raise ValueError(f"max_len must be an int in [1, max_position_embeddings={positions}], got {max_len!r}")
    limit = int(max_len or positions)
    what = f"max_len={limit}" if max_len is not None else f"max_position_embeddings={limit}"
    lengths = []
    for i, p in enumerate(prompts):
        p = np.asarray(p)
        if p.ndim != 1 or p.size == 0 or not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"prompt {i} must be a non-empty list of token ids, got {p.tolist()!r:.80}")
        if p.min() < 0 or p.max() >= vocab:
            raise ValueError(f"prompt {i} holds token ids outside the vocabulary [0, {vocab})")
        if len(p) + max_new_tokens > limit:
            raise ValueError(f"prompt {i} has {len(p)} tokens: with max_new_tokens={max_new_tokens} it needs "
                             f"{len(p) + max_new_tokens} positions, more than the cache holds ({what})")
        lengths.append(len(p))
    settings = SamplingSettings(
        max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
        stop_tokens=tuple(int(t) for t in stop_tokens), pad_id=int(pad_id), truncate_after=int(truncate_after),
        truncate_prob=float(truncate_prob))
    return settings, np.asarray(lengths, np.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len", "num_samples"))
def _prefill(graphdef, state, tokens, start, *, max_len: int, num_samples: int):
    """Left-padded prompts [P, n] -> (cache of P * G rows after the prompts, next-token logits [P * G, vocab])."""
    model = merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], max_len, start=start)
    out = model.forward(tokens, cache=cache, cache_empty=True, logits_slice=(tokens.shape[1] - 1, tokens.shape[1]))
    cache, logits = out.cache, out.logits[:, -1]
    if num_samples > 1:
        cache, logits = cache.repeat(num_samples), jnp.repeat(logits, num_samples, axis=0)
    return cache, logits


def _truncate(logp, top_k: int, top_p: float):
    """Mask (to -inf) the tokens outside the top-k / nucleus-p set of each row of log-probs [rows, vocab]."""
    if top_k:
        kth = jax.lax.top_k(logp, top_k)[0][:, -1:]
        logp = jnp.where(logp < kth, -jnp.inf, logp)
    if top_p < 1.0:
        sorted_logp = jnp.sort(logp, axis=-1)[:, ::-1]
        probs = jnp.exp(sorted_logp)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        keep = before < top_p  # the smallest prefix whose mass reaches top_p (always >= 1 token)
        threshold = jnp.min(jnp.where(keep, sorted_logp, jnp.inf), axis=-1, keepdims=True)
        logp = jnp.where(logp < threshold, -jnp.inf, logp)
    return logp


def pick(logits, keys, settings: SamplingSettings):
    """logits [rows, vocab], keys [rows] -> (tokens [rows] int32, their log-probs [rows] fp32, see module doc)."""
    logp = scaled_log_softmax(logits, settings.temperature)
    if settings.temperature == 0:
        tokens = jnp.argmax(logits, axis=-1)
    else:
        truncated = _truncate(logp, settings.top_k, settings.top_p)
        tokens = jax.vmap(lambda k, x: jax.random.categorical(jax.random.wrap_key_data(k), x))(keys, truncated)
    tokens = tokens.astype(jnp.int32)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "num_samples"), donate_argnames=("cache",))
def _decode(graphdef, state, cache, logits, key, *, settings: SamplingSettings, num_samples: int):
    """The decode loop: (cache, first logits) -> tokens, log-probs, lengths, stopped, truncated, steps."""
    rows, T = logits.shape[0], settings.max_new_tokens
    model = merge(graphdef, state)
    ids = jnp.arange(rows)
    base = jax.random.wrap_key_data(key)
    row_keys = jax.vmap(lambda i, g: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(base, i), g)))(
        ids // num_samples, ids % num_samples)
    stops = jnp.asarray(settings.stop_tokens or (-1,), jnp.int32)
    log_p_min = math.log(settings.truncate_prob)

    def cond(c):
        return (c["t"] < T) & ~jnp.all(c["done"])

    def body(c):
        t, done = c["t"], c["done"]
        step_keys = jax.vmap(lambda k: jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(k), t)))(
            row_keys)
        tok, logp = pick(c["logits"], step_keys, settings)
        active = ~done
        tok = jnp.where(active, tok, settings.pad_id)
        logp = jnp.where(active, logp, 0.0)
        stopped = active & jnp.any(tok[:, None] == stops[None, :], axis=-1) if settings.stop_tokens else done & False
        run = jnp.where(active & (logp > log_p_min), c["run"] + 1, 0)
        truncated = active & (run >= settings.truncate_after) if settings.truncate_after else done & False
        out = model.forward(tok[:, None], cache=c["cache"])
        return {
            "t": t + 1, "cache": out.cache, "logits": out.logits[:, -1],
            "tokens": jax.lax.dynamic_update_slice(c["tokens"], tok[:, None], (0, t)),
            "logprobs": jax.lax.dynamic_update_slice(c["logprobs"], logp[:, None], (0, t)),
            "lengths": c["lengths"] + active.astype(jnp.int32),
            "stopped": c["stopped"] | stopped, "truncated": c["truncated"] | truncated, "run": run,
            "done": done | stopped | truncated,
        }

    init = {
        "t": jnp.zeros((), jnp.int32), "cache": cache, "logits": logits,
        "tokens": jnp.full((rows, T), settings.pad_id, jnp.int32), "logprobs": jnp.zeros((rows, T), jnp.float32),
        "lengths": jnp.zeros((rows,), jnp.int32), "stopped": jnp.zeros((rows,), bool),
        "truncated": jnp.zeros((rows,), bool), "run": jnp.zeros((rows,), jnp.int32), "done": jnp.zeros((rows,), bool),
    }
    c = jax.lax.while_loop(cond, body, init)
    # The final cache is returned (and dropped by the caller) so that XLA updates the donated one in place.
    return (c["tokens"], c["logprobs"], c["lengths"], c["stopped"], c["truncated"], c["t"]), c["cache"]
