"""Document sources: a pure map from a document index (0, 1, 2, ... forever) to a tokenized document.

A source never keeps a read position of its own: the pipeline's position is the next index (plus an
offset into that document), which is what makes a run resumable and bit-reproducible.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import numpy as np

TEXT_UNITS = ("file", "paragraph", "line")


@dataclasses.dataclass(frozen=True)
class Document:
    """tokens [n] int32; loss_mask [n] bool marks the tokens to predict (None: all of them)."""

    tokens: np.ndarray
    loss_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def with_specials(tokenizer, ids: np.ndarray, mask: np.ndarray | None = None) -> Document:
    """Wrap ids in the tokenizer's BOS / EOS (where it has them); the mask covers EOS, never BOS."""
    pre = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    post = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    tokens = np.concatenate([np.asarray(pre, np.int32), ids.astype(np.int32), np.asarray(post, np.int32)])
    if mask is not None:
        mask = np.concatenate([np.zeros(len(pre), bool), mask.astype(bool), np.ones(len(post), bool)])
    return Document(tokens, mask)


def expand_paths(paths: str | list[str]) -> list[str]:
    """Comma-separated (or listed) files / globs / directories -> sorted list of files."""
    if isinstance(paths, str):
        paths = [p for p in paths.split(",") if p.strip()]
    files: list[str] = []
    for p in paths:
        p = os.path.expanduser(p.strip())
        if os.path.isdir(p):
            found = [f for f in glob.glob(os.path.join(p, "**", "*"), recursive=True) if os.path.isfile(f)]
        else:
            found = glob.glob(p)
        if not found:
            raise FileNotFoundError(f"data path {p!r} matches no file")
        files.extend(found)
    return sorted(set(files))


def read_texts(files: list[str], *, unit: str = "file", jsonl_field: str = "text") -> list[str]:
    """The text units of ``files`` in order: ``.jsonl`` files give one per line (``jsonl_field``);
    other files one per file, per blank-line-separated paragraph, or per line (``unit``)."""
    if unit not in TEXT_UNITS:
        raise ValueError(f"text unit {unit!r}: choose from {TEXT_UNITS}")
    texts: list[str] = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for n, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if jsonl_field not in row:
                            raise ValueError(f"{path}:{n}: no field {jsonl_field!r} (has {sorted(row)})")
                        texts.append(str(row[jsonl_field]))
                continue
            content = f.read()
        if unit == "file":
            texts.append(content)
        elif unit == "paragraph":
            texts.extend(p.strip("\n") for p in content.split("\n\n"))
        else:
            texts.extend(content.splitlines())
    return [t for t in texts if t.strip()]


class TextSource:
    """Text files / JSONL held in memory; document i is text unit perm_e[i mod N] of epoch e = i // N,
    each epoch's permutation drawn from (seed, e) (identity if ``shuffle`` is off)."""

    def __init__(self, paths, tokenizer, *, seed: int = 0, shuffle: bool = True, unit: str = "file",
                 jsonl_field: str = "text"):
        self.files = expand_paths(paths)
        self.texts = read_texts(self.files, unit=unit, jsonl_field=jsonl_field)
        if not self.texts:
            raise ValueError(f"no non-empty documents in {self.files}")
        self.tokenizer, self.seed, self.shuffle = tokenizer, int(seed), bool(shuffle)
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            n = len(self.texts)
            self._perm = (np.random.default_rng((self.seed, epoch)).permutation(n) if self.shuffle
                          else np.arange(n))
            self._perm_epoch = epoch
        return self._perm

    def __getitem__(self, index: int) -> Document:
        epoch, j = divmod(int(index), len(self.texts))
        text = self.texts[int(self._order(epoch)[j])]
        return with_specials(self.tokenizer, self.tokenizer.encode(text))
