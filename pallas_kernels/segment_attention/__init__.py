"""Causal softmax attention within packed segments (runs of equal ids): a Pallas Triton flash kernel that skips the
blocks a query tile's segments cannot reach (gpu_triton.py), and its fp32 reference (reference.py)."""

from pallas_kernels.segment_attention.gpu_triton import Params, segment_attention
from pallas_kernels.segment_attention.reference import run_bounds

__all__ = ["Params", "segment_attention", "run_bounds"]
