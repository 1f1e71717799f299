"""Softmax decode attention over a KV cache: the oracle, the Pallas kernels (split-K GPU, Mosaic
TPU) and the dispatching op."""

from pallas_kernels.decode_attention import reference
from pallas_kernels.decode_attention.ops import IMPLS, decode_attention

__all__ = ["IMPLS", "decode_attention", "reference"]
