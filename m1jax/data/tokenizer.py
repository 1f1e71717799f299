"""Tokenizers: a byte-level default (no files needed) and Hugging Face ``tokenizer.json`` files."""

from __future__ import annotations

import json
import os

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then BOS = 256 and EOS = 257 (vocab_size 258)."""

    vocab_size = 258
    bos_id = 256
    eos_id = 257

    def encode(self, text: str) -> np.ndarray:
        """text -> ids [n] int32 (no special tokens)."""
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """ids -> text, dropping special tokens; invalid UTF-8 becomes U+FFFD."""
        data = bytes(int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` through the ``tokenizers`` package.

    BOS / EOS are the tokens named ``bos_token`` / ``eos_token``, taken from the arguments, else from a
    ``tokenizer_config.json`` beside the file; without either, documents get no such token.
    """

    def __init__(self, path: str, *, bos_token: str = "", eos_token: str = ""):
        try:
            import tokenizers
        except ImportError as e:  # pragma: no cover - tokenizers is a dependency
            raise ImportError("a tokenizer.json needs the `tokenizers` package (pip install tokenizers)") from e
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
        self._tok = tokenizers.Tokenizer.from_file(path)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        names = _special_names(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
        self.bos_id = self._token_id(bos_token or names.get("bos_token"), "bos_token")
        self.eos_id = self._token_id(eos_token or names.get("eos_token"), "eos_token")

    def _token_id(self, token: str | None, what: str) -> int | None:
        if not token:
            return None
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"{what} {token!r} is not in the tokenizer's vocabulary")
        return int(i)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)


def _special_names(config_path: str) -> dict:
    if not os.path.isfile(config_path):
        return {}
    with open(config_path) as f:
        d = json.load(f)
    out = {}
    for key in ("bos_token", "eos_token"):
        v = d.get(key)
        out[key] = v.get("content") if isinstance(v, dict) else v
    return out


def load_tokenizer(spec: str, *, bos_token: str = "", eos_token: str = ""):
    """``"bytes"`` -> ByteTokenizer; a path to a tokenizer.json (or a directory holding one) -> HFTokenizer."""
    if spec in ("", "bytes"):
        return ByteTokenizer()
    path = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else spec
    return HFTokenizer(path, bos_token=bos_token, eos_token=eos_token)
