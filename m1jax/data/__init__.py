"""Deterministic, resumable data: tokenizers, document sources (text / JSONL / procedural tasks), packing.

Every source maps a document index to a document; each batch row is its own stream of documents, so a
pipeline's position is two ints per row (next document, token offset into it) that go into the
training checkpoint, and a process of a multi-host run makes only the rows its devices hold.
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
