"""The data pipeline: a source, packing into fixed shapes, an optional prefetch thread.

Its position (``state``: next document, offset) is a small JSON-able dict saved with each training
checkpoint; a pipeline built from that state produces exactly the batches that would have followed.
"""

from __future__ import annotations

import queue
import threading

from m1jax.data.packing import pack_batch
from m1jax.data.sources import TextSource
from m1jax.data.tasks import TaskSource
from m1jax.data.tokenizer import load_tokenizer

SOURCES = ("tasks", "text")


class DataPipeline:
    """Iterator of packed batches (dicts of [batch, seq_len] numpy arrays, see m1jax.data.packing).

    ``state`` is the position after the last batch handed out: restart from it to continue exactly.
    Batches are produced strictly in order (one producer thread), so prefetching changes nothing.
    """

    def __init__(self, source, *, batch_size: int, seq_len: int, split_documents: bool = True,
                 state: dict | None = None, prefetch: int = 2):
        self.source, self.batch_size, self.seq_len = source, int(batch_size), int(seq_len)
        self.split_documents = bool(split_documents)
        state = state or {"doc": 0, "offset": 0}
        self._state = {"doc": int(state["doc"]), "offset": int(state["offset"])}
        self._prefetch = int(prefetch)
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> dict:
        return dict(self._state)

    def _produce(self, doc: int, offset: int):
        arrays, (doc, offset) = pack_batch(self.source, doc, offset, self.batch_size, self.seq_len,
                                           split_documents=self.split_documents)
        return arrays, {"doc": doc, "offset": offset}

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _worker(self, doc: int, offset: int):
        try:
            while not self._stop.is_set():
                item = self._produce(doc, offset)
                doc, offset = item[1]["doc"], item[1]["offset"]
                self._put(item)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._prefetch <= 0:
            batch, self._state = self._produce(self._state["doc"], self._state["offset"])
            return batch
        if self._thread is None:
            self._queue = queue.Queue(self._prefetch)
            self._thread = threading.Thread(target=self._worker, args=(self._state["doc"], self._state["offset"]),
                                            daemon=True, name="m1jax-data")
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def build_source(data_cfg, seed: int, tokenizer=None):
    """The document source described by a ``config.data`` section (see experiments/pretrain.py)."""
    tokenizer = tokenizer or load_tokenizer(data_cfg.tokenizer, bos_token=data_cfg.get("bos_token", ""),
                                            eos_token=data_cfg.get("eos_token", ""))
    if data_cfg.source == "tasks":
        return TaskSource(data_cfg.tasks, tokenizer, seed=seed, size=data_cfg.task_size, loss_on=data_cfg.loss_on)
    if data_cfg.source == "text":
        return TextSource(data_cfg.paths, tokenizer, seed=seed, shuffle=data_cfg.shuffle, unit=data_cfg.text_unit,
                          jsonl_field=data_cfg.jsonl_field)
    raise ValueError(f"config.data.source={data_cfg.source!r}: choose from {SOURCES}")


def build_pipeline(data_cfg, seed: int, state: dict | None = None, *, source=None) -> DataPipeline:
    """A DataPipeline over ``config.data`` starting at ``state`` (the beginning if None)."""
    source = source or build_source(data_cfg, seed)
    return DataPipeline(source, batch_size=data_cfg.batch_size, seq_len=data_cfg.seq_len,
                        split_documents=data_cfg.split_documents, state=state, prefetch=data_cfg.prefetch)
