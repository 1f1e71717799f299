"""Public entry point: input validation and backend dispatch for lightning attention."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.lightning_attention import reference, split

DEFAULT_BLOCK_SIZE = 256


def _reference_chunked(q, k, v, decay, *, initial_state, segment_ids, block_size, interpret):
    del interpret
    return reference.chunked(
        q, k, v, decay, initial_state=initial_state, segment_ids=segment_ids, block_size=block_size
    )


def _reference_recurrent(q, k, v, decay, *, initial_state, segment_ids, block_size, interpret):
    del block_size, interpret
    return reference.recurrent(q, k, v, decay, initial_state=initial_state, segment_ids=segment_ids)


def _tpu_impl():
    from pallas_kernels.lightning_attention import tpu  # lazy: Pallas Mosaic TPU kernels

    return tpu.lightning_attention


def _triton_impl():
    from pallas_kernels.lightning_attention import gpu_triton  # lazy: Pallas Triton GPU kernels

    return gpu_triton.lightning_attention


def _mosaic_gpu_impl():
    # lazy: Pallas Mosaic GPU (Hopper) forward + Triton backward; written against JAX 0.11 (the Mosaic
    # GPU API differs on 0.10). Falls back to the Triton impl per call where the kernel does not apply.
    from pallas_kernels.lightning_attention import gpu_mosaic

    return gpu_mosaic.lightning_attention


def _mosaic_gpu_all_impl():
    # lazy: the Mosaic GPU forward and a backward of three Mosaic forward passes (gpu_mosaic_bwd.py), what "auto"
    # picks on Hopper (fwd+bwd 1.33-1.52x "mosaic_gpu"'s on an H200). Falls back per call as "mosaic_gpu" does.
    from pallas_kernels.lightning_attention import gpu_mosaic_bwd

    return gpu_mosaic_bwd.lightning_attention


# impl name -> callable(q, k, v, decay, *, initial_state, segment_ids, block_size, interpret)
# returning (o, final fp32 state), differentiable in q, k, v and initial_state.
# Kernel modules are imported lazily so that a missing backend never breaks the reference.
_IMPLS = {
    "reference": lambda: _reference_chunked,
    "reference_recurrent": lambda: _reference_recurrent,
    "tpu": lambda: _tpu_impl(),
    "triton": lambda: _triton_impl(),
    "mosaic_gpu": lambda: _mosaic_gpu_impl(),
    "mosaic_gpu_all": lambda: _mosaic_gpu_all_impl(),
}
IMPLS = ("auto", *_IMPLS)


def _check_inputs(q, k, v, decay, initial_state, segment_ids, block_size):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be [batch, seq, heads, head_dim], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating dtype, got {x.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"q and k shapes differ: {q.shape} vs {k.shape}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v [batch, seq, heads] {v.shape[:3]} does not match q's {q.shape[:3]}")
    b, _, h, dk = q.shape
    if decay.shape != (h,):
        raise ValueError(f"decay must have shape [heads] = ({h},), got {decay.shape}")
    if not jnp.issubdtype(decay.dtype, jnp.floating):
        raise TypeError(f"decay must be a floating dtype, got {decay.dtype}")
    if initial_state is not None and initial_state.shape != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [batch, heads, dk, dv] = {(b, h, dk, v.shape[-1])}, "
            f"got {initial_state.shape}"
        )
    if segment_ids is not None:
        if segment_ids.shape != q.shape[:2]:
            raise ValueError(f"segment_ids must be [batch, seq] = {q.shape[:2]}, got {segment_ids.shape}")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise TypeError(f"segment_ids must be integer, got {segment_ids.dtype}")
    if int(block_size) < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")


# Oldest JAX whose Mosaic GPU API gpu_mosaic.py is written for (auto never picks it on older ones).
_MOSAIC_GPU_MIN_JAX = (0, 11)


def _is_hopper(device) -> bool:
    """Compute capability 9.x (H100 / H200 / GH200): wgmma and TMA, which the Mosaic kernel needs."""
    cc = str(getattr(device, "compute_capability", "") or "")
    return cc.split(".")[0] == "9"


def _auto_impl() -> str:
    """The fastest implementation registered for the default backend.

    TPU: "tpu". GPU: "mosaic_gpu_all" on Hopper (compute capability 9.x) with JAX >= 0.11, else
    "triton". Otherwise "reference". On an H200 "mosaic_gpu_all" (the backward as three Mosaic forward passes) ran
    fwd+bwd 1.33-1.52x faster than "mosaic_gpu" (Triton backward), the forward the same
    (experiments/results/lightning_vs_fla_mosaic_all_h200.md).
    """
    backend = jax.default_backend()
    if backend == "tpu":
        return "tpu"
    if backend == "gpu":
        if _is_hopper(jax.devices()[0]) and tuple(jax.__version_info__[:2]) >= _MOSAIC_GPU_MIN_JAX:
            return "mosaic_gpu_all"
        return "triton"
    return "reference"


def _resolve_impl(impl: str):
    """impl -> (name, callable)."""
    if impl != "auto" and impl not in _IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    name = _auto_impl() if impl == "auto" else impl
    return name, _IMPLS[name]()


def _seq_parts(seq_split, impl_name, q, v) -> int:
    """The number of sequence chunks to run in parallel (``split.py``): ``seq_split`` if an int, and for
    "auto" what fills the GPU's SMs with the GPU kernels (1 elsewhere)."""
    if seq_split == "auto":
        if impl_name not in ("mosaic_gpu", "mosaic_gpu_all", "triton"):
            return 1
        b, t, h, _ = q.shape
        return split.auto_parts(b, t, h, v.shape[-1], split.num_sms())
    if isinstance(seq_split, bool) or not isinstance(seq_split, int) or seq_split < 1:
        raise ValueError(f"seq_split must be 'auto' or a positive int, got {seq_split!r}")
    return seq_split


def lightning_attention(
    q,
    k,
    v,
    decay,
    *,
    initial_state=None,
    return_state: bool = False,
    segment_ids=None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    impl: str = "auto",
    interpret: bool = False,
    seq_split: int | str = "auto",
):
    """Causal decayed linear attention (MiniMax lightning attention).

    Args:
      q, k: [batch, seq, heads, dk]; v: [batch, seq, heads, dv]. Any float dtype.
      decay: [heads] positive rates s; the per-step factor is e^{-s}.
      initial_state: optional [batch, heads, dk, dv] state (kept in fp32).
      return_state: also return the final fp32 state.
      segment_ids: optional [batch, seq] ints; the state resets where the id changes.
      block_size: chunk length C of the blocked algorithm.
      impl: "auto" picks the fastest available path for the backend (``_auto_impl``: "mosaic_gpu_all" on
        Hopper GPUs, "triton" on other GPUs, "tpu", else "reference"); "reference" is pure jnp;
        "mosaic_gpu" (Hopper forward + Triton backward) runs "triton" for whatever it does not
        support (segment_ids, fp32 or mixed dtypes, other head dims); "mosaic_gpu_all" also runs the
        backward as three passes of the Mosaic forward (gpu_mosaic_bwd.py; T a multiple of 64, dk and dv
        64 or 128, else the Triton backward).
      interpret: run Pallas kernels in interpret mode (CPU testing).
      seq_split: run the kernel on this many equal chunks of the sequence at once, chained through their
        states (``split.py``; exact). "auto": enough chunks to fill the SMs with the GPU kernels when
        batch * heads is small (chunks >= 1024 tokens, power-of-two counts dividing seq), else 1.

    Returns:
      o [batch, seq, heads, dv] in q.dtype, and the final state if return_state.
    """
    _check_inputs(q, k, v, decay, initial_state, segment_ids, block_size)
    name, fn = _resolve_impl(impl)
    fn = functools.partial(fn, block_size=int(block_size), interpret=interpret)
    parts = _seq_parts(seq_split, name, q, v)
    if parts > 1:
        o, state = split.split_sequence(fn, parts, q, k, v, decay, initial_state=initial_state,
                                        segment_ids=segment_ids)
    else:
        o, state = fn(q, k, v, decay, initial_state=initial_state, segment_ids=segment_ids)
    return (o, state) if return_state else o


# impl name -> callable(qkv, decay, *, initial_state, segment_ids, block_size, interpret, seq_split) for the
# interleaved layout (``lightning_attention_qkv``); other impls run on slices.
def _triton_qkv():
    from pallas_kernels.lightning_attention import gpu_triton_qkv

    return gpu_triton_qkv.lightning_attention_qkv


def _mosaic_gpu_qkv():
    from pallas_kernels.lightning_attention import gpu_mosaic

    return gpu_mosaic.lightning_attention_qkv


def _mosaic_gpu_all_qkv():
    from pallas_kernels.lightning_attention import gpu_mosaic_bwd

    return gpu_mosaic_bwd.lightning_attention_qkv


_QKV_IMPLS = {"triton": _triton_qkv, "mosaic_gpu": _mosaic_gpu_qkv, "mosaic_gpu_all": _mosaic_gpu_all_qkv}


def _qkv_fits(qkv) -> bool:
    """The interleaved GPU kernels take it: head_dim a power of two in [16, 256] (gpu_triton_qkv.qkv_unsupported_reason,
    restated here so that no kernel module is imported for other backends)."""
    d = qkv.shape[-1] // 3
    return 16 <= d <= 256 and d & (d - 1) == 0


def lightning_attention_qkv(qkv, decay, *, initial_state=None, return_state: bool = False, segment_ids=None,
                            block_size: int = DEFAULT_BLOCK_SIZE, impl: str = "auto", interpret: bool = False,
                            seq_split: int | str = "auto"):
    """``lightning_attention`` of q, k, v = qkv[..., :D], qkv[..., D:2D], qkv[..., 2D:] for qkv [batch, seq, heads,
    3 D], the lightning layer's per-head interleaved projection output.

    The GPU kernels ("triton", "mosaic_gpu", "mosaic_gpu_all"; D a power of two in [16, 256]) read the three
    column ranges in place and write d qkv as one interleaved array, so neither the slices nor the gradient's
    concatenation (two passes over [batch, seq, 3 heads D] each) are materialised; other impls and shapes run
    ``lightning_attention`` on the slices. Arguments and results are ``lightning_attention``'s.
    """
    if qkv.ndim != 4 or qkv.shape[-1] % 3:
        raise ValueError(f"qkv must be [batch, seq, heads, 3 * head_dim], got shape {qkv.shape}")
    d = qkv.shape[-1] // 3
    view = jax.ShapeDtypeStruct((*qkv.shape[:3], d), qkv.dtype)
    _check_inputs(view, view, view, decay, initial_state, segment_ids, block_size)
    name, _ = _resolve_impl(impl)
    if name not in _QKV_IMPLS or not _qkv_fits(qkv):
        return lightning_attention(
            qkv[..., :d], qkv[..., d: 2 * d], qkv[..., 2 * d:], decay, initial_state=initial_state,
            return_state=return_state, segment_ids=segment_ids, block_size=block_size, impl=impl,
            interpret=interpret, seq_split=seq_split,
        )
    o, state = _QKV_IMPLS[name]()(qkv, decay, initial_state=initial_state, segment_ids=segment_ids,
                                  block_size=int(block_size), interpret=interpret,
                                  seq_split=_seq_parts(seq_split, name, view, view))
    return (o, state) if return_state else o


def lightning_attention_decode(q, k, v, decay, state, *, impl: str = "auto", interpret: bool = False):
    """One decode step for a batch of independent slots (see ``decode.py``).

    q, k [batch, heads, dk], v [batch, heads, dv], state [batch, heads, dk, dv] fp32, updated in place
    by the kernels (donate it under jit to avoid a copy; a non-fp32 state is upcast first, a copy).
    ``impl``: a decode name ("auto", "triton", "tpu", "reference") or a forward name from ``IMPLS``,
    mapped to the decode kernel of the same backend.
    Returns (o [batch, heads, dv] in q.dtype, new fp32 state).
    """
    from pallas_kernels.lightning_attention import decode as _decode

    if impl not in _decode.DECODE_IMPLS and impl not in _IMPLS:
        names = tuple(dict.fromkeys((*_decode.DECODE_IMPLS, *IMPLS)))
        raise ValueError(f"impl must be one of {names}, got {impl!r}")
    if state.dtype != jnp.float32 and jnp.issubdtype(state.dtype, jnp.floating):
        state = state.astype(jnp.float32)
    return _decode.lightning_attention_decode(
        q, k, v, decay, state, impl=_decode.decode_impl_for(impl), interpret=interpret
    )


__all__ = ["lightning_attention", "lightning_attention_qkv", "lightning_attention_decode", "DEFAULT_BLOCK_SIZE",
           "IMPLS"]

