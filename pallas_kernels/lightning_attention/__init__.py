"""Lightning attention: references, Pallas kernels and the dispatching op."""

from pallas_kernels.lightning_attention import reference
from pallas_kernels.lightning_attention.ops import (
    lightning_attention,
    lightning_attention_decode,
    lightning_attention_qkv,
)

__all__ = ["lightning_attention", "lightning_attention_qkv", "lightning_attention_decode", "reference"]
