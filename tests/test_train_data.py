"""Data pipeline: packing layout, document boundaries, determinism, resume from a saved position."""

import json

import numpy as np
import pytest

from m1jax.data import (ByteTokenizer, DataPipeline, Document, TaskSource, TextSource, load_tokenizer,
                        pack_batch, sample_task)
from m1jax.data.tasks import split_of
from m1jax.train.loss import next_token_targets


class ListSource:
    """Documents of given lengths, token values encoding (document, index) so tests can trace them."""

    def __init__(self, lengths):
        self.lengths = lengths

    def __getitem__(self, i):
        n = self.lengths[i % len(self.lengths)]
        return Document(np.asarray([1000 * (i + 1) + j for j in range(n)], np.int32))


def unpack(arrays):
    """Rows -> list of (segment tokens, positions) pieces, in order."""
    pieces = []
    for r in range(arrays["tokens"].shape[0]):
        seg = arrays["segment_ids"][r]
        for s in range(1, seg.max() + 1):
            idx = np.nonzero(seg == s)[0]
            assert np.all(np.diff(idx) == 1), "a segment must be contiguous"
            pieces.append((arrays["tokens"][r, idx], arrays["positions"][r, idx]))
        assert np.all(seg[seg.argmin():] == 0) or seg.min() > 0, "padding only at the end of a row"
    return pieces


def test_packing_split_documents_keeps_every_token_in_order():
    src = ListSource([5, 13, 2, 7, 30, 1])
    arrays, (doc, off) = pack_batch(src, 0, 0, batch=4, seq_len=10, split_documents=True)
    assert all(a.shape == (4, 10) for a in arrays.values())
    assert (arrays["segment_ids"] > 0).all(), "split packing leaves no padding"
    stream = np.concatenate([src[i].tokens for i in range(6)])[:40]
    assert np.array_equal(arrays["tokens"].reshape(-1), stream)
    for tokens, pos in unpack(arrays):
        assert np.array_equal(pos, tokens % 1000), "positions count from each document's start"
    assert (doc, off) == (4, 40 - 5 - 13 - 2 - 7)


def test_packing_without_split_pads_and_truncates():
    src = ListSource([4, 5, 3, 12, 2])
    arrays, (doc, off) = pack_batch(src, 0, 0, batch=3, seq_len=8, split_documents=False)
    rows = [list(arrays["segment_ids"][r]) for r in range(3)]
    assert rows[0] == [1] * 4 + [0] * 4  # doc 1 (5 tokens) does not fit the 4 left
    assert rows[1] == [1] * 5 + [2] * 3
    assert rows[2] == [1] * 8  # 12-token doc truncated to the row
    assert (doc, off) == (4, 0)
    assert arrays["tokens"][0, 4:].tolist() == [0] * 4 and arrays["loss_mask"][0, 4:].tolist() == [0] * 4


def test_next_token_targets_never_cross_documents_or_padding():
    src = ListSource([3, 4, 6])
    arrays, _ = pack_batch(src, 0, 0, batch=1, seq_len=12, split_documents=False)
    targets, weights = next_token_targets(arrays)
    seg = arrays["segment_ids"][0]  # [1 1 1 2 2 2 2 0 0 0 0 0]
    assert seg.tolist() == [1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0, 0]
    assert np.asarray(weights)[0].tolist() == [1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert np.asarray(targets)[0, :2].tolist() == [1001, 1002]


def test_task_data_trains_on_the_answer_by_default(rng):
    from experiments import pretrain
    from m1jax import ModelConfig
    from m1jax.data.pipeline import build_source
    from m1jax.train.config import default_config, validate

    tok = ByteTokenizer()
    tasks = ",".join(rng.permutation(["copy", "reverse", "sort", "add", "mul", "countdown"])[:3])
    src = TaskSource(tasks, tok, seed=int(rng.integers(1 << 30)), size=int(rng.integers(2, 7)))
    for index in rng.integers(0, 1 << 40, 20):
        name, prompt, answer = src.example(int(index))
        d = src[int(index)]
        assert d.tokens[0] == tok.bos_id and d.tokens[-1] == tok.eos_id
        assert tok.decode(d.tokens) == prompt + answer
        p = len(tok.encode(prompt))  # the mask is exactly answer + EOS: nothing of BOS or the prompt
        assert d.loss_mask.tolist() == [False] * (1 + p) + [True] * (len(tok.encode(answer)) + 1)
    assert TaskSource(tasks, tok, loss_on="all")[0].loss_mask is None  # "all" stays available
    assert default_config(ModelConfig.tiny()).data.loss_on == "answer"
    cfg = pretrain.get_config("tiny")
    assert build_source(cfg.data, 0).loss_on == "answer"
    cfg.data.loss_on = "prompt"
    with pytest.raises(ValueError, match=r"config.data.loss_on='prompt': must be one of \('answer', 'all'\)"):
        validate(cfg)


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "add", "mul"])
def test_tasks_are_correct(name):
    rng = np.random.default_rng(0)
    for _ in range(20):
        prompt, answer = sample_task(name, rng, 5)
        body = prompt.split(" ", 1)[-1][:-1] if name in ("copy", "reverse", "sort") else prompt[:-1]
        expect = {"copy": lambda s: s, "reverse": lambda s: s[::-1],
                  "sort": lambda s: " ".join(sorted(s.split())),
                  "add": lambda s: str(eval(s)), "mul": lambda s: str(eval(s))}[name](body)
        assert answer == expect, (prompt, answer)


def test_task_documents_are_a_pure_function_of_seed_and_index():
    a, b = TaskSource("copy,sort,add", ByteTokenizer(), seed=1), TaskSource("copy,sort,add", ByteTokenizer(), seed=1)
    assert np.array_equal(a[123].tokens, b[123].tokens)  # no need to generate 0..122 first
    assert not np.array_equal(a[5].tokens, TaskSource("copy,sort,add", ByteTokenizer(), seed=2)[5].tokens)


def test_train_split_leaves_out_eval_prompts_deterministically():
    tok = ByteTokenizer()
    every = TaskSource("add,copy", tok, seed=4, size=2)
    train = TaskSource("add,copy", tok, seed=4, size=2, split="train")
    replaced = 0
    for i in range(400):
        name, prompt, answer = train.example(i)
        assert split_of(prompt) == "train" and train.example(i) == TaskSource(
            "add,copy", tok, seed=4, size=2, split="train").example(i)  # a pure function of (seed, index)
        first = every.example(i)
        assert name == first[0]  # the task mixture is kept: a replacement is the same task
        if split_of(first[1]) == "train":
            assert np.array_equal(train[i].tokens, every[i].tokens)  # train documents are unchanged
        else:
            replaced += 1
    assert 15 < replaced < 80  # ~EVAL_PERCENT % of 400
    with pytest.raises(ValueError, match="split='eval'"):
        TaskSource("add", tok, split="eval")


def test_data_split_config_key():
    from experiments import pretrain
    from m1jax.data.pipeline import build_source
    from m1jax.train.config import validate

    cfg = pretrain.get_config("tiny")  # its held-out exact match is only held out with split="train"
    assert cfg.data.split == "train" and build_source(cfg.data, 0).split == "train"
    cfg.data.split = "all"
    validate(cfg)
    assert build_source(cfg.data, 0).split == "all"
    cfg.data.split = "eval"
    with pytest.raises(ValueError, match=r"config.data.split='eval': must be one of \('all', 'train'\)"):
        validate(cfg)
    cfg = pretrain.get_config("add_warmstart")
    validate(cfg)
    assert (cfg.data.tasks, cfg.data.loss_on, cfg.data.split) == ("add", "answer", "train")


def _batches(pipe, n):
    out = [next(pipe) for _ in range(n)]
    return out, pipe.state


@pytest.mark.parametrize("prefetch", [0, 3])
def test_pipeline_resumes_exactly_from_its_state(prefetch):
    src = TaskSource("copy,reverse,add", ByteTokenizer(), seed=0)
    full, _ = _batches(DataPipeline(src, batch_size=4, seq_len=32, prefetch=prefetch), 7)
    pipe = DataPipeline(src, batch_size=4, seq_len=32, prefetch=prefetch)
    first, state = _batches(pipe, 3)
    pipe.close()
    state = json.loads(json.dumps(state))  # goes through the checkpoint as JSON
    rest, _ = _batches(DataPipeline(src, batch_size=4, seq_len=32, prefetch=prefetch, state=state), 4)
    for x, y in zip(full, first + rest, strict=True):
        for k in x:
            assert np.array_equal(x[k], y[k]), k


def test_pipeline_rows_are_independent_streams():
    """A pipeline making some rows (one host's share) makes exactly those rows of the full batch."""
    src = TaskSource("copy,sort", ByteTokenizer(), seed=1)
    full = DataPipeline(src, batch_size=5, seq_len=20, prefetch=0)
    part = DataPipeline(src, batch_size=5, seq_len=20, prefetch=0, rows=[4, 1])
    for _ in range(3):
        a, b = next(full), next(part)
        for k in a:
            assert np.array_equal(a[k][[1, 4]], b[k]), k
    assert part.state == {"rows": [x for x in full.state["rows"] if x[0] in (1, 4)]}
    with pytest.raises(ValueError, match="single-stream pipeline"):
        DataPipeline(src, batch_size=5, seq_len=20, state={"doc": 3, "offset": 0})
    with pytest.raises(ValueError, match=r"no position for rows \[5\]"):
        DataPipeline(src, batch_size=6, seq_len=20, state=full.state)
    with pytest.raises(ValueError, match="subset of range"):
        DataPipeline(src, batch_size=5, seq_len=20, rows=[5])


def test_text_and_jsonl_sources_shuffle_per_epoch_deterministically(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond one\n\nthird")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(3)) + "\n")
    tok = ByteTokenizer()
    src = TextSource(str(tmp_path / "*"), tok, seed=0, unit="paragraph")
    assert sorted(src.texts) == sorted(["first paragraph", "second one", "third", "row 0", "row 1", "row 2"])
    epoch0 = [tok.decode(src[i].tokens) for i in range(6)]
    epoch1 = [tok.decode(src[i].tokens) for i in range(6, 12)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(src.texts) and epoch0 != epoch1
    again = TextSource(str(tmp_path), tok, seed=0, unit="paragraph")
    assert [tok.decode(again[i].tokens) for i in range(12)] == epoch0 + epoch1
    with pytest.raises(FileNotFoundError, match="matches no file"):
        TextSource(str(tmp_path / "nope*.txt"), tok)


def test_hf_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = load_tokenizer(str(tmp_path))
    assert tok.vocab_size == 5 and (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.encode("hello world hello").tolist() == [3, 4, 3]
