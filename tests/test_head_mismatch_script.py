"""experiments/benchmarks/head_mismatch.py: flag errors and the per-head graphdef over one parameter tree (the run
itself is checked by its --small mode, ~45 s on a CPU)."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from experiments.benchmarks import head_mismatch as hm
from experiments.benchmarks.rollout import model_config
from m1jax.model import MiniMaxM1


@pytest.mark.parametrize("flags, message", [
    (["--heads", "bf16,fp8"], "unknown head 'fp8'"),
    (["--heads", ","], "--heads is empty"),
    (["--prompt-len", "5"], "MIN,MAX"),
    (["--prompt-len", "9,3"], "MIN <= MAX"),
    (["--micro-batches", "3"], "must divide"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])
def test_bad_flags(flags, message):
    with pytest.raises(ValueError, match=message):
        hm.parse_args(["--out", "x.md", *flags])


def test_defaults():
    args = hm.parse_args(["--out", "x.md", "--small"])
    assert args.heads[:3] == ["bf16", "highest", "bf16x3"] and set(args.heads) == set(hm.HEADS)
    assert args.prompt_len == (4, 24) and args.prompts * args.num_samples % args.micro_batches == 0


def test_graphdef_per_head_shares_the_params():
    config = model_config("float32", True)
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0))), nnx.Param))
    for name, (dtype, precision) in hm.HEADS.items():
        c = nnx.merge(hm.graphdef_for(config, params, name), params).config
        assert (c.lm_head_dtype, c.lm_head_precision) == (dtype, precision)
    wrong = {**params, "lm_head": jax.ShapeDtypeStruct((3, 3), params["lm_head"].dtype)}
    with pytest.raises(ValueError, match="parameter tree differs"):
        hm.graphdef_for(config, wrong, "bf16")
