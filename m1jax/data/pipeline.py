"""The data pipeline: a source, packing into fixed shapes, an optional prefetch thread.

Every row of the [batch, seq_len] batch is its own stream: row r packs documents r, r + batch,
r + 2 * batch, ... (its own position: next document of its stream, token offset into it). Rows never
depend on each other, so a process of a multi-host run produces only the rows its devices hold
(``rows``) and the global batch is the same for any number of processes. The position of the rows
(``state``) is a small JSON-able dict saved with each training checkpoint; a pipeline built from that
state produces exactly the batches that would have followed.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from m1jax.data.packing import pack_batch
from m1jax.data.sources import TextSource
from m1jax.data.tasks import TaskSource
from m1jax.data.tokenizer import load_tokenizer

SOURCES = ("tasks", "text")
FIELDS = ("tokens", "segment_ids", "positions", "loss_mask")


class RowDocuments:
    """The documents of row ``row``'s stream: document i is ``source[row + i * batch_size]``."""

    def __init__(self, source, row: int, batch_size: int):
        self.source, self.row, self.batch_size = source, int(row), int(batch_size)

    def __getitem__(self, i: int):
        return self.source[self.row + int(i) * self.batch_size]

    def __repr__(self) -> str:
        return f"row {self.row} of {self.batch_size} of {self.source!r}"


class DataPipeline:
    """Iterator of packed batches (dicts of [len(rows), seq_len] numpy arrays, see m1jax.data.packing).

    ``rows`` (default: all ``batch_size``) are the rows of the global batch this pipeline produces, in
    increasing order. ``state`` is the position after the last batch handed out, {"rows": [[row, doc,
    offset], ...]} for this pipeline's rows: restart from it (or from the union of the states of
    pipelines covering all rows) to continue exactly. Batches are produced strictly in order (one
    producer thread), so prefetching changes nothing.
    """

    def __init__(self, source, *, batch_size: int, seq_len: int, split_documents: bool = True,
                 state: dict | None = None, prefetch: int = 2, rows=None):
        self.source, self.batch_size, self.seq_len = source, int(batch_size), int(seq_len)
        self.split_documents = bool(split_documents)
        self.rows = tuple(range(self.batch_size)) if rows is None else tuple(sorted({int(r) for r in rows}))
        if not self.rows or not all(0 <= r < self.batch_size for r in self.rows):
            raise ValueError(f"rows {rows} must be a non-empty subset of range(batch_size={self.batch_size})")
        self._positions = _positions(state, self.rows)
        self._prefetch = int(prefetch)
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> dict:
        return {"rows": [[r, *self._positions[r]] for r in self.rows]}

    def _produce(self, positions: dict):
        out = {k: np.zeros((len(self.rows), self.seq_len), np.float32 if k == "loss_mask" else np.int32)
               for k in FIELDS}
        after = {}
        for i, r in enumerate(self.rows):
            arrays, after[r] = pack_batch(RowDocuments(self.source, r, self.batch_size), *positions[r], 1,
                                          self.seq_len, split_documents=self.split_documents)
            for k in FIELDS:
                out[k][i] = arrays[k][0]
        return out, after

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _worker(self, positions: dict):
        try:
            while not self._stop.is_set():
                item = self._produce(positions)
                positions = item[1]
                self._put(item)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._prefetch <= 0:
            batch, self._positions = self._produce(self._positions)
            return batch
        if self._thread is None:
            self._queue = queue.Queue(self._prefetch)
            self._thread = threading.Thread(target=self._worker, args=(self._positions,), daemon=True,
                                            name="m1jax-data")
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._positions = item
        return batch

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _positions(state: dict | None, rows: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """{row: (doc, offset)} of ``rows`` from a pipeline state (the start when None)."""
    if state is None:
        return {r: (0, 0) for r in rows}
    if "rows" not in state:
        raise ValueError(f"data state {state} is not a per-row position ({{'rows': [[row, doc, offset], ...]}}): "
                         "it comes from the single-stream pipeline of an older m1jax, whose batches this one cannot "
                         "continue; start a new run (--config.init_from can take the old run's params)")
    known = {int(r): (int(doc), int(offset)) for r, doc, offset in state["rows"]}
    missing = [r for r in rows if r not in known]
    if missing:
        raise ValueError(f"data state has no position for rows {missing} (it covers rows {sorted(known)}); was "
                         "it saved with another batch size?")
    return {r: known[r] for r in rows}


def build_source(data_cfg, seed: int, tokenizer=None):
    """The document source described by a ``config.data`` section (see experiments/pretrain.py)."""
    tokenizer = tokenizer or load_tokenizer(data_cfg.tokenizer, bos_token=data_cfg.get("bos_token", ""),
                                            eos_token=data_cfg.get("eos_token", ""))
    if data_cfg.source == "tasks":
        return TaskSource(data_cfg.tasks, tokenizer, seed=seed, size=data_cfg.task_size, loss_on=data_cfg.loss_on,
                          split=data_cfg.get("split", "all"))
    if data_cfg.source == "text":
        return TextSource(data_cfg.paths, tokenizer, seed=seed, shuffle=data_cfg.shuffle, unit=data_cfg.text_unit,
                          jsonl_field=data_cfg.jsonl_field)
    raise ValueError(f"config.data.source={data_cfg.source!r}: choose from {SOURCES}")


def build_pipeline(data_cfg, seed: int, state: dict | None = None, *, source=None, rows=None) -> DataPipeline:
    """A DataPipeline over ``config.data`` starting at ``state`` (the beginning if None), producing
    ``rows`` of each batch (default all)."""
    source = source or build_source(data_cfg, seed)
    return DataPipeline(source, batch_size=data_cfg.batch_size, seq_len=data_cfg.seq_len,
                        split_documents=data_cfg.split_documents, state=state, prefetch=data_cfg.prefetch,
                        rows=rows)
