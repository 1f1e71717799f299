"""The files of a Hugging Face export beside config.json and the weights: tokenizer and generation config.

A tokenizer is named by a spec: ``"bytes"`` (m1jax's ByteTokenizer, written as a real ``tokenizer.json``),
a ``tokenizer.json`` file or a directory holding the tokenizer files (copied), or ``None`` / ``"none"``
(no tokenizer files). Every export gets a ``generation_config.json``: the source's when converting a
Hugging Face directory that has one, else one built from the BOS / EOS ids.
"""

from __future__ import annotations

import json
import os

from m1jax.config import ModelConfig

BOS_TOKEN, EOS_TOKEN = "<|bos|>", "<|eos|>"  # the byte tokenizer's special tokens (ids 256 and 257)
# What a tokenizer directory may hold; copied as they are (tokenizer.json is the one read here).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
GENERATION_FILE = "generation_config.json"
# MiniMax-M1's recommended sampling settings (temperature 1.0, top-p 0.95).
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 1.0, "top_p": 0.95}


def _json(d: dict) -> bytes:
    return (json.dumps(d, indent=2, ensure_ascii=False) + "\n").encode()


def _byte_chars() -> dict[int, str]:
    """Byte -> the printable character the ByteLevel pre-tokenizer maps it to (GPT-2's byte alphabet):
    printable Latin-1 bytes stand for themselves, the other 68 take U+0100.. in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def byte_tokenizer_json() -> bytes:
    """m1jax's ByteTokenizer as a ``tokenizers`` tokenizer.json: byte b is id b, BOS 256, EOS 257.

    A BPE model with no merges over the 256 byte characters, so every byte is its own token; BOS is
    prepended when special tokens are added (as m1jax's data pipeline and ``generate`` do). Decoding
    drops special tokens and replaces invalid UTF-8 with U+FFFD, like ByteTokenizer.decode.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {c: b for b, c in _byte_chars().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS_TOKEN, EOS_TOKEN)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, 256)])
    return tok.to_str(pretty=True).encode()


def tokenizer_config(bos_token: str | None, eos_token: str | None, max_length: int, *,
                     split_special_tokens: bool = False) -> bytes:
    """tokenizer_config.json for a bare tokenizer.json: what AutoTokenizer needs to load it as-is.

    ``clean_up_tokenization_spaces`` is off so decoding returns the text unchanged. ``split_special_tokens``
    encodes text that spells a special token as ordinary text (ByteTokenizer's behaviour; a tokenizer.json
    read by m1jax's HFTokenizer matches special tokens in text, the default).
    """
    d = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos_token, "eos_token": eos_token,
         "pad_token": eos_token, "model_max_length": max_length, "clean_up_tokenization_spaces": False,
         "split_special_tokens": split_special_tokens or None}
    return _json({k: v for k, v in d.items() if v is not None})


def tokenizer_files(spec: str | None, config: ModelConfig, *, bos_token: str = "",
                    eos_token: str = "") -> tuple[dict[str, bytes], int | None, int | None]:
    """(files, bos id, eos id) of the tokenizer ``spec`` for a model with ``config``.

    ``bos_token`` / ``eos_token`` name the special tokens of a tokenizer.json that has no
    tokenizer_config.json beside it (as ``data.bos_token`` / ``data.eos_token`` do for training).
    Raises ValueError for a tokenizer with more tokens than the model's vocabulary.
    """
    if spec in (None, "", "none"):
        return {}, None, None
    from m1jax.data.tokenizer import ByteTokenizer, HFTokenizer

    if spec == "bytes":
        tok = ByteTokenizer()
        files = {"tokenizer.json": byte_tokenizer_json(),
                 "tokenizer_config.json": tokenizer_config(BOS_TOKEN, EOS_TOKEN, config.max_position_embeddings,
                                                           split_special_tokens=True)}
    else:
        spec = os.path.abspath(os.path.expanduser(spec))
        if os.path.isdir(spec):  # a tokenizer directory: all its tokenizer files
            folder, path, wanted = spec, os.path.join(spec, "tokenizer.json"), TOKENIZER_FILES
        else:  # a tokenizer.json file, and the tokenizer_config.json beside it that names its special tokens
            folder, path, wanted = os.path.dirname(spec), spec, ("tokenizer_config.json",)
        files = {name: _read(os.path.join(folder, name)) for name in wanted
                 if name != "tokenizer.json" and os.path.isfile(os.path.join(folder, name))}
        if not os.path.isfile(path):
            if not files:
                raise FileNotFoundError(f"tokenizer {spec}: no tokenizer.json (or other tokenizer files) there")
            return files, None, None  # e.g. a sentencepiece tokenizer.model only: copied, its ids unknown here
        tok = HFTokenizer(path, bos_token=bos_token, eos_token=eos_token)
        files["tokenizer.json"] = _read(path)
        if "tokenizer_config.json" not in files:
            files["tokenizer_config.json"] = tokenizer_config(bos_token or None, eos_token or None,
                                                              config.max_position_embeddings)
    if tok.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer {spec!r} has {tok.vocab_size} tokens, more than the model's "
                         f"vocab_size={config.vocab_size}")
    return files, tok.bos_id, tok.eos_id


def has_tokenizer(folder: str | os.PathLike) -> bool:
    """Whether a directory holds any tokenizer file (what hf-to-hf carries over)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def export_files(config: ModelConfig, tokenizer: str | None = None, *, bos_token: str = "", eos_token: str = "",
                 source: str | os.PathLike | None = None) -> tuple[dict[str, bytes], ModelConfig]:
    """The extra files of an export and its config with BOS / EOS ids filled in.

    The ids are the config's own where set, else the tokenizer's. ``source``: a Hugging Face directory
    being converted, whose generation_config.json is carried over as it is.
    """
    files, bos, eos = tokenizer_files(tokenizer, config, bos_token=bos_token, eos_token=eos_token)
    if config.bos_token_id is None and bos is not None:
        config = config.replace(bos_token_id=bos)
    if config.eos_token_id is None and eos is not None:
        config = config.replace(eos_token_id=eos)
    carried = os.path.join(os.fspath(source), GENERATION_FILE) if source is not None else ""
    if carried and os.path.isfile(carried):
        files[GENERATION_FILE] = _read(carried)
    else:
        files[GENERATION_FILE] = _json(generation_config(config))
    return files, config


def generation_config(config: ModelConfig) -> dict:
    """generation_config.json: BOS / EOS (EOS also pads; MiniMax has no pad token) and sampling defaults."""
    ids = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
           "pad_token_id": config.eos_token_id}
    return {**{k: v for k, v in ids.items() if v is not None}, **GENERATION_DEFAULTS}
