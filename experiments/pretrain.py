"""Training presets. Usage:

    m1jax train --config=experiments/pretrain.py:tiny --workdir=/tmp/tiny [--config.optim.lr=3e-3 ...]

  tiny      CPU, minutes: a 4-layer hybrid model (L F L F, hidden 128, 0.9M params) learns copy / reverse / sort
            from bytes (task size 4, loss on the answers, eval prompts held out); held-out greedy exact match every
            100 steps. 600 steps in 5-6.5 min on 2 busy cores; at the end, over seeds 0-2: copy 100%, reverse
            75-100%, sort 100%, add 3-5% (addition needs far more steps; experiments/results/pretrain_tiny_cpu.md).
  add_warmstart  CPU, ~1 min: the RL warm start for task "addition" (m1jax.rl; RL with size=2): a tiny
            hybrid model (L F L F) learns to add numbers of up to 2 digits only partly (answer-only loss, the RL
            eval prompts left out), so that RL's exact-match reward has room to rise. 300 steps in 63 s on 2
            cores (loss ~1.0); held-out greedy exact match 16% / 11.5% (seeds 0 / 1), mean reward of 8 samples
            at T=1 ~11%.
  100m      GPU: ~100M active params (12 layers, 8 experts top-2), bf16 activations.
  1b        GPU: ~1B active params (16 layers, 8 experts top-2); ~2.7B total, ~40 GiB of fp32 train state.
  m1_456b   the full MiniMax-M1 shape (456B total, 45.9B active): --config.dry_run=True prints sizes and
            FLOPs; training it needs many devices (--config.mesh.*) and is untested.
Measured on one H200 (jax 0.11.2, flax 0.12.10; kernels "auto", MoE "grouped"):
  1b    at 8K context (16 x 8192 tokens per step, grad_accum_steps=16): 68.5k tokens/s, MFU 40.9%, peak
        59.3 GiB (2026-12-01, experiments/results/train_1b_8k_h200_fused.md: 67.7k / 40.4% with
        kernels.fused=False in the same call; 49.9k / 29.8% on 2026-11-22); 1 x 8192 micro-batch 128.6 ms in
        experiments/profile_train.py (train_profile_1b_fused_h200.md; 174.5 ms on 2026-11-22).
  100m  not re-measured since the grouped-matmul / cuDNN kernels (before them: ~60k tokens/s, MFU ~4.4%).
GPU presets default to the procedural tasks with the byte tokenizer so they run anywhere; for text use
--config.data.source=text --config.data.paths=/data/*.jsonl --config.data.tokenizer=/path/tokenizer.json.
"""

from m1jax.config import ModelConfig, hybrid_layout
from m1jax.train.config import default_config, model_fields


# The GPU presets' common numerics: bf16 activations and LM head (see ModelConfig.lm_head_dtype).
GPU_MODEL = dict(vocab_size=32768, dtype="bfloat16", lm_head_dtype="bfloat16", block_size=256)


def _shape(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, experts: int, inter: int,
           **kw) -> ModelConfig:
    alpha = (2 * layers) ** 0.25  # M1's deepnorm-style residual scale
    return ModelConfig(
        num_hidden_layers=layers, attn_type_list=hybrid_layout(layers), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, rotary_dim=head_dim // 2,
        num_local_experts=experts, num_experts_per_tok=2, intermediate_size=inter,
        layernorm_full_attention_alpha=alpha, layernorm_linear_attention_alpha=alpha, layernorm_mlp_alpha=alpha,
        **kw,
    )


def get_config(arg: str = "tiny"):
    if arg == "tiny":
        # L F L F, 4 heads of 32 (hidden 128), RoPE on all 32 dims: with L L L F / hidden 64 / RoPE on 8 dims, copy and
        # reverse stayed near 0% held out (experiments/results/pretrain_tiny_cpu.md)
        model = ModelConfig.tiny(vocab_size=258, num_hidden_layers=4, attn_type_list=(0, 1, 0, 1), hidden_size=128,
                                 head_dim=32, rotary_dim=32, block_size=16, max_position_embeddings=4096)
        cfg = default_config(model)
        cfg.steps = 600
        cfg.data.update(batch_size=16, seq_len=128, tasks="copy,reverse,sort,add", task_size=4, split="train",
                        split_documents=False)  # whole examples per row; the eval prompts held out
        cfg.optim.update(lr=3e-3, warmup_steps=20, weight_decay=0.01)
        cfg.checkpoint.update(every=100, keep=2)
        cfg.log.every = 20
        cfg.eval.update(every=100, problems=100)
    elif arg in ("add_warmstart", "countdown_warmstart"):  # RL warm starts: partial held-out skill (docstring)
        model = ModelConfig.tiny(vocab_size=258, num_hidden_layers=4, attn_type_list=(0, 1, 0, 1), block_size=16,
                                 max_position_embeddings=512)
        cfg = default_config(model)
        # addition: held-out greedy ~10-20% at 300 steps (by 600 it is ~65%); countdown (3 numbers up to 12):
        # 8% at 300 steps, 21.5% at 450 (mean@8 at T=1: 10%), on 400 distinct held-out prompts, seed 0
        task, size, cfg.steps = ("add", 2, 300) if arg == "add_warmstart" else ("countdown", 3, 450)
        cfg.data.update(batch_size=32, seq_len=64, tasks=task, task_size=size, loss_on="answer", split="train",
                        split_documents=False)  # whole examples per row
        cfg.optim.update(lr=3e-3, warmup_steps=20, weight_decay=0.01)
        cfg.checkpoint.update(every=100, keep=3)
        cfg.log.every = 20
    elif arg == "100m":
        model = _shape(12, 768, 12, 4, 64, 8, 1024, **GPU_MODEL)
        cfg = default_config(model)
        cfg.steps = 20000
        cfg.data.update(batch_size=32, seq_len=2048)
        cfg.optim.update(lr=6e-4, warmup_steps=1000, grad_accum_steps=4)  # 8 x 2048 per micro-batch
        cfg.checkpoint.every = 1000
    elif arg == "1b":
        model = _shape(16, 2048, 16, 4, 128, 8, 2816, **GPU_MODEL)
        cfg = default_config(model)
        cfg.steps = 50000
        cfg.data.update(batch_size=64, seq_len=4096)
        cfg.optim.update(lr=3e-4, warmup_steps=2000, grad_accum_steps=32)  # 2 x 4096 per micro-batch
        cfg.checkpoint.every = 1000
    elif arg == "m1_456b":
        cfg = default_config(ModelConfig.minimax_m1_456b(dtype="bfloat16", param_dtype="bfloat16"))
        cfg.steps = 100000
        cfg.data.update(batch_size=512, seq_len=8192)
        cfg.optim.update(lr=8e-5, warmup_steps=2000, grad_accum_steps=64)
        cfg.checkpoint.every = 500
    else:
        raise ValueError(f"unknown preset {arg!r} for experiments/pretrain.py; choose from "
                         "['100m', '1b', 'add_warmstart', 'countdown_warmstart', 'm1_456b', 'tiny']")
    cfg.model.update(model_fields(model) if arg != "m1_456b" else {})
    return cfg
