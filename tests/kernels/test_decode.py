"""Decode kernel (one token per slot, fp32 state updated in place) against the jnp reference.

Pallas kernels run in interpret mode on the CPU: the Triton kernel with plain interpret mode, the
TPU kernel with TPU semantics (pltpu.InterpretParams).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.lightning_attention import decode, reference

KERNELS = ("triton", "tpu")


def _inputs(key, b, h, dk, dv, dtype, t=None):
    ks = jax.random.split(key, 5)
    lead = (b, h) if t is None else (b, t, h)
    q = jax.random.normal(ks[0], (*lead, dk), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (*lead, dk), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (*lead, dv), jnp.float32).astype(dtype)
    decay = jax.random.uniform(ks[3], (h,), jnp.float32, 0.01, 1.5)
    state = jax.random.normal(ks[4], (b, h, dk, dv), jnp.float32)
    return q, k, v, decay, state


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_step_matches_reference(impl, dtype):
    q, k, v, decay, state = _inputs(jax.random.PRNGKey(0), 2, 8, 32, 128, dtype)
    o, new_state = decode.lightning_attention_decode(q, k, v, decay, state, impl=impl, interpret=True)
    ro, rs = reference.step(q, k, v, decay, state)
    assert o.dtype == dtype and o.shape == ro.shape
    assert new_state.dtype == jnp.float32 and new_state.shape == state.shape
    np.testing.assert_allclose(np.asarray(new_state), np.asarray(rs), rtol=1e-5, atol=1e-5)
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(o, np.float32), np.asarray(ro, np.float32), rtol=tol, atol=tol * 8)


@pytest.mark.parametrize("impl", KERNELS)
def test_chained_steps_match_recurrent(impl):
    b, t, h, dk, dv = 1, 4, 8, 16, 32
    q, k, v, decay, state0 = _inputs(jax.random.PRNGKey(1), b, h, dk, dv, jnp.float32, t=t)

    @jax.jit
    def run(q, k, v, state):
        def body(s, xs):
            o, s = decode.lightning_attention_decode(*xs[:2], xs[2], decay, s, impl=impl, interpret=True)
            return s, o

        xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v))
        s, o = jax.lax.scan(body, state, xs)
        return jnp.moveaxis(o, 0, 1), s

    o, s = run(q, k, v, state0)
    ro, rs = reference.recurrent(q, k, v, decay, initial_state=state0)
    np.testing.assert_allclose(np.asarray(o), np.asarray(ro), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(s), np.asarray(rs), rtol=1e-5, atol=1e-5)


def test_state_is_aliased_in_place():
    q, k, v, decay, state = _inputs(jax.random.PRNGKey(2), 1, 8, 16, 16, jnp.float32)
    for impl in KERNELS:
        jaxpr = jax.make_jaxpr(
            lambda *a, impl=impl: decode.lightning_attention_decode(*a, impl=impl, interpret=True)
        )(q, k, v, decay, state)
        eqns = [e for e in _walk(jaxpr.jaxpr) if e.primitive.name == "pallas_call"]
        assert len(eqns) == 1, impl
        assert tuple(eqns[0].params["input_output_aliases"]) == ((4, 1),), impl


def _walk(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in _subjaxprs(e):
            yield from _walk(sub)


def _subjaxprs(eqn):
    for p in eqn.params.values():
        if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
            yield p.jaxpr
        elif hasattr(p, "eqns"):
            yield p


def test_ops_entry_point_dispatches():
    q, k, v, decay, state = _inputs(jax.random.PRNGKey(3), 1, 8, 16, 32, jnp.bfloat16)
    ro, rs = reference.step(q, k, v, decay, state)
    for impl in ("auto", "triton", "tpu"):
        o, s = pallas_kernels.lightning_attention_decode(q, k, v, decay, state, impl=impl, interpret=True)
        np.testing.assert_allclose(np.asarray(s), np.asarray(rs), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(o, np.float32), np.asarray(ro, np.float32), rtol=2e-2, atol=0.2)
    with pytest.raises(ValueError):
        pallas_kernels.lightning_attention_decode(q, k, v, decay, state, impl="nope")


def test_bad_inputs_raise():
    q, k, v, decay, state = _inputs(jax.random.PRNGKey(4), 2, 8, 16, 32, jnp.float32)
    f = decode.lightning_attention_decode
    with pytest.raises(ValueError):
        f(q[..., :8], k, v, decay, state, impl="triton", interpret=True)  # q / k mismatch
    with pytest.raises(ValueError):
        f(q, k, v[:1], decay, state, impl="triton", interpret=True)  # batch mismatch
    with pytest.raises(ValueError):
        f(q, k, v, decay, state[..., :16], impl="tpu", interpret=True)  # state dv
    with pytest.raises(ValueError):
        f(q, k, v, decay[:4], state, impl="triton", interpret=True)  # decay heads
    with pytest.raises(ValueError):
        f(q[:, None], k[:, None], v[:, None], decay, state, impl="reference")  # a seq axis
    with pytest.raises(TypeError):
        f(q, k, v, decay, state.astype(jnp.bfloat16), impl="triton", interpret=True)
    with pytest.raises(ValueError):
        f(q, k, v, decay, state, impl="mosaic_tpu")
    q3, k3, v3, d3, s3 = _inputs(jax.random.PRNGKey(5), 1, 8, 24, 32, jnp.float32)
    with pytest.raises(ValueError):  # Triton tiles need power-of-two dims
        f(q3, k3, v3, d3, s3, impl="triton", interpret=True)
