"""Grouped (ragged) matmul for MoE experts: see ``ops.grouped_matmul``."""

from pallas_kernels.grouped_matmul.ops import IMPLS, grouped_matmul

__all__ = ["grouped_matmul", "IMPLS"]
