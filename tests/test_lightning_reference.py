"""The pure-jnp lightning attention forms agree with each other and with a float64 numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.lightning_attention import reference as ref
from tests.conftest import rel_err


def numpy_recurrence(q, k, v, s, s0=None, seg=None):
    """float64 literal recurrence: S_t = e^{-s} S_{t-1} + k_t^T v_t, o_t = q_t S_t (state reset per segment)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, dk = q.shape
    S = np.zeros((b, h, dk, v.shape[-1])) if s0 is None else np.array(s0, np.float64)
    o = np.zeros(v.shape)
    lam = np.exp(-np.asarray(s, np.float64))[None, :, None, None]
    for i in range(t):
        if seg is not None and i > 0:
            S = S * (seg[:, i] == seg[:, i - 1])[:, None, None, None]
        S = lam * S + k[:, i, :, :, None] * v[:, i, :, None, :]
        o[:, i] = np.einsum("bhd,bhde->bhe", q[:, i], S)
    return o, S


def inputs(rng, b, t, h, dk, dv, init=False, segments=False):
    q, k = (rng.standard_normal((b, t, h, dk)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((b, t, h, dv)).astype(np.float32)
    # Rates from almost no decay to e^{-6} per step (M1's layers span ~1e-5 .. 0.7).
    s = np.exp(rng.uniform(np.log(1e-5), np.log(6.0), h)).astype(np.float32)
    s0 = rng.standard_normal((b, h, dk, dv)).astype(np.float32) if init else None
    seg = None
    if segments:
        cuts = np.sort(rng.choice(np.arange(1, t), size=min(3, t - 1), replace=False))
        seg = np.stack([np.searchsorted(cuts, np.arange(t), side="right") + 7 * i for i in range(b)]).astype(np.int32)
    return q, k, v, s, s0, seg


CASES = [  # (b, t, h, dk, dv, block)
    (2, 37, 4, 8, 8, 8),
    (1, 64, 2, 16, 8, 16),  # exact multiple of the block
    (2, 5, 3, 4, 6, 16),  # shorter than one block, non-power-of-two heads, dk != dv
    (1, 50, 2, 8, 8, 7),  # odd block size
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("init, segments", [(False, False), (True, False), (True, True)])
def test_forms_agree_with_float64_recurrence(rng, case, init, segments):
    b, t, h, dk, dv, block = case
    q, k, v, s, s0, seg = inputs(rng, b, t, h, dk, dv, init, segments)
    o64, st64 = numpy_recurrence(q, k, v, s, s0, seg)
    kw = dict(
        initial_state=None if s0 is None else jnp.asarray(s0), segment_ids=None if seg is None else jnp.asarray(seg)
    )
    args = (jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(s))
    results = {
        "quadratic": ref.quadratic(*args, **kw),
        "recurrent": ref.recurrent(*args, **kw),
        "chunked": ref.chunked(*args, block_size=block, **kw),
    }
    for name, (o, st) in results.items():
        # fp32 sums of O(t * dk) unit-size products: relative error ~1e-6, 2e-5 leaves margin.
        assert rel_err(o, o64) < 2e-5, name
        assert rel_err(st, st64) < 2e-5, name


def test_large_decay_does_not_overflow(rng):
    q, k, v, _, _, _ = inputs(rng, 1, 300, 2, 8, 8)
    s = jnp.asarray([30.0, 80.0])  # e^{+s t} would overflow fp32 at t = 256
    o, st = ref.chunked(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), s, block_size=256)
    o64, st64 = numpy_recurrence(q, k, v, np.asarray(s))
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(st))
    assert rel_err(o, o64) < 2e-5


@pytest.mark.parametrize("init", [False, True])
def test_chunked_gradients_match_the_oracle(rng, init):
    q, k, v, s, s0, seg = inputs(rng, 2, 29, 2, 8, 8, init=init, segments=True)
    do = jnp.asarray(rng.standard_normal(q.shape[:3] + (8,)).astype(np.float32))
    dst = jnp.asarray(rng.standard_normal((2, 2, 8, 8)).astype(np.float32))

    def loss(fn, q, k, v, s0):
        o, st = fn(q, k, v, jnp.asarray(s), initial_state=s0, segment_ids=jnp.asarray(seg))
        return jnp.sum(o * do) + jnp.sum(st * dst)

    args = (jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), None if s0 is None else jnp.asarray(s0))
    argnums = (0, 1, 2, 3) if init else (0, 1, 2)
    g_chunk = jax.grad(lambda *a: loss(lambda *x, **kw: ref.chunked(*x, block_size=8, **kw), *a), argnums)(*args)
    g_quad = jax.grad(lambda *a: loss(ref.quadratic, *a), argnums)(*args)
    for gc, gq in zip(g_chunk, g_quad, strict=True):
        assert rel_err(gc, gq) < 2e-5


def test_step_chain_equals_full_sequence(rng):
    q, k, v, s, s0, _ = inputs(rng, 2, 9, 2, 8, 4, init=True)
    state = jnp.asarray(s0)
    outs = []
    for i in range(9):
        o, state = pallas_kernels.lightning_attention_decode(
            jnp.asarray(q[:, i]), jnp.asarray(k[:, i]), jnp.asarray(v[:, i]), jnp.asarray(s), state
        )
        outs.append(o)
    o64, st64 = numpy_recurrence(q, k, v, s, s0)
    assert rel_err(jnp.stack(outs, 1), o64) < 2e-5 and rel_err(state, st64) < 2e-5


def test_op_dispatch_and_dtype(rng):
    q, k, v, s, s0, _ = inputs(rng, 1, 20, 2, 8, 8, init=True)
    args = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)] + [jnp.asarray(s)]
    o, st = pallas_kernels.lightning_attention(*args, initial_state=jnp.asarray(s0), return_state=True,
                                               block_size=8, impl="reference")
    assert o.dtype == jnp.bfloat16 and st.dtype == jnp.float32
    o2 = pallas_kernels.lightning_attention(*args, initial_state=jnp.asarray(s0), impl="reference_recurrent")
    assert rel_err(o, o2) < 1e-2  # both round the same fp32 result to bf16 (2^-8 relative)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(q=np.zeros((2, 8, 2))), ValueError, "q must be"),
        (dict(k=np.zeros((1, 8, 2, 6))), ValueError, "q and k shapes differ"),
        (dict(v=np.zeros((1, 7, 2, 4))), ValueError, "v \\[batch, seq, heads\\]"),
        (dict(decay=np.ones(3)), ValueError, "decay must have shape"),
        (dict(q=np.zeros((1, 8, 2, 4), np.int32), k=np.zeros((1, 8, 2, 4), np.int32)), TypeError, "floating"),
        (dict(initial_state=np.zeros((1, 2, 4, 5))), ValueError, "initial_state"),
        (dict(segment_ids=np.zeros((1, 9), np.int32)), ValueError, "segment_ids"),
        (dict(impl="cuda"), ValueError, "impl must be one of"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    args = dict(q=np.zeros((1, 8, 2, 4)), k=np.zeros((1, 8, 2, 4)), v=np.zeros((1, 8, 2, 4)), decay=np.ones(2))
    args.update(change)
    kw = {n: args.pop(n) for n in ("initial_state", "segment_ids", "impl") if n in args}
    arrays = {n: jnp.asarray(x) for n, x in args.items()}
    kw = {n: (jnp.asarray(x) if isinstance(x, np.ndarray) else x) for n, x in kw.items()}
    with pytest.raises(error, match=match):
        pallas_kernels.lightning_attention(arrays["q"], arrays["k"], arrays["v"], arrays["decay"], **kw)
