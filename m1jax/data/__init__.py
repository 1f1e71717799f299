"""Deterministic, resumable data: tokenizers, document sources (text / JSONL / procedural tasks), packing.

Every source maps a document index to a document, so a pipeline's position is two ints
(next document, token offset into it) that go into the training checkpoint.
"""

from m1jax.data.packing import pack_batch
from m1jax.data.pipeline import DataPipeline, build_pipeline, build_source
from m1jax.data.sources import Document, TextSource
from m1jax.data.tasks import TASKS, TaskSource, sample_task
from m1jax.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "TASKS", "ByteTokenizer", "DataPipeline", "Document", "HFTokenizer", "TaskSource", "TextSource",
    "build_pipeline", "build_source", "load_tokenizer", "pack_batch", "sample_task",
]
