"""Shared helpers for the test suite (CPU, fp32 unless a test says otherwise)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the relative error used throughout the parity tests."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's node id: fresh inputs per test, reproducible reruns."""
    seed = zlib.crc32(request.node.nodeid.encode())  # hash() is salted per process
    return np.random.default_rng(seed)


def _jit_logits():
    from flax import nnx

    return nnx.jit(lambda model, tokens: model(tokens))


jit_logits = _jit_logits()  # model(tokens) under nnx.jit: eager dispatch of the tiny model is ~4x slower
