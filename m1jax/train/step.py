"""The train state (a plain pytree) and the jitted train step (donated state, fixed shapes).

state = {"params": nested dict of arrays (the model's nnx.Param values, nnx.State.to_pure_dict form),
         "opt_state": the optax state, "step": int32 scalar (updates applied so far)}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from m1jax.config import ModelConfig
from m1jax.model import MiniMaxM1
from m1jax.train.loss import chunked_cross_entropy_sums, cross_entropy_sums, next_token_targets


def set_kernels(model: MiniMaxM1, *, moe: str = "grouped", expert_matmul: str = "auto", lightning: str = "auto",
                softmax: str = "auto", decode: str = "auto", fused: bool = True) -> MiniMaxM1:
    """Choose the MoE path (and its grouped-matmul impl), the lightning-attention and the softmax-attention
    implementations of every layer, and the softmax layers' one-token decode path (static attributes).
    ``fused`` sets the fused paths (same results): the lightning kernels on the interleaved q|k|v
    (LightningAttention.fused) and the experts' one up-projection matmul (MoE.fuse_up); False is the A/B baseline."""
    if not isinstance(fused, bool):
        raise ValueError(f"kernels.fused must be True or False, got {fused!r}")
    for layer in model.layers:
        layer.block_sparse_moe.impl = moe
        layer.block_sparse_moe.matmul_impl = expert_matmul
        layer.block_sparse_moe.fuse_up = fused
        if layer.is_lightning:
            layer.self_attn.kernel_impl = lightning
            layer.self_attn.fused = fused
        else:
            layer.self_attn.impl = softmax
            layer.self_attn.decode_impl = decode
    return model


def abstract_model(config: ModelConfig, kernels: dict | None = None, *, remat: bool = False) -> MiniMaxM1:
    """The model with ShapeDtypeStructs for params (nothing allocated), kernels and remat set.

    ``remat`` recomputes each decoder layer in the backward pass (activation memory of one layer).
    """
    model = nnx.eval_shape(lambda: MiniMaxM1(config, rngs=nnx.Rngs(0)))
    set_kernels(model, **(kernels or {}))
    if remat:
        if not hasattr(model, "remat"):
            raise ValueError("config.remat=True: this MiniMaxM1 has no `remat` switch")
        model.remat = True
    return model


def model_graphdef(config_or_model, kernels: dict | None = None, *, remat: bool = False):
    """(graphdef, abstract params as a pure dict of ShapeDtypeStruct) of a ModelConfig or abstract model."""
    model = config_or_model
    if isinstance(model, ModelConfig):
        model = abstract_model(model, kernels, remat=remat)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"the model holds state other than nnx.Param, which training does not handle: {rest}")
    return graphdef, nnx.to_pure_dict(params)


def init_params(config: ModelConfig, seed: int, shardings=None):
    """Freshly initialised params (pure dict), built under one jit (placed per ``shardings`` if given).

    The key is an argument, not a constant: a jitted function without inputs lets XLA try to
    constant-fold the whole initialisation, which compiled for minutes at 1B parameters on a GPU.
    """
    init = jax.jit(lambda key: nnx.to_pure_dict(nnx.state(MiniMaxM1(config, rngs=nnx.Rngs(key)), nnx.Param)),
                   out_shardings=shardings)
    return init(jax.random.key(seed))


def init_train_state(params, tx: optax.GradientTransformation, shardings: dict | None = None) -> dict:
    """{"params", "opt_state": tx.init(params), "step": 0}, placed per ``shardings`` (a state-shaped dict)."""
    s = shardings or {}
    state = {"params": params, "opt_state": jax.jit(tx.init, out_shardings=s.get("opt_state"))(params),
             "step": jnp.zeros((), jnp.int32)}
    return state if shardings is None else jax.device_put(state, shardings)


def abstract_train_state(abstract_params, tx: optax.GradientTransformation) -> dict:
    """ShapeDtypeStructs of the train state (for restoring a checkpoint and for dry runs)."""
    return jax.eval_shape(lambda p: init_train_state(p, tx), abstract_params)


def _micro_batches(batch, n: int):
    """[b, ...] arrays -> [n, b / n, ...], micro-batch j = rows j, j + n, j + 2n, ... (strided, so a batch
    split over devices in contiguous blocks gives every device its share of each micro-batch)."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


_STATS = ("nll", "correct", "aux_loss", "router/max_load", "router/min_load")


def make_loss_and_grads(graphdef, config: ModelConfig, *, grad_accum_steps: int = 1, ce_chunk: int = 0):
    """(params, batch) -> (loss, stats, grads, n_targets), traceable (call it under jit).

    loss = sum of target NLLs / number of targets (over the whole global batch)
           + config.router_aux_loss_coef * mean over micro-batches of the MoE load-balancing loss.
    With grad_accum_steps = A > 1 the batch [b, n] runs as A micro-batches [b / A, n] in a lax.scan,
    their gradients summed in fp32: exactly the full-batch gradient of the NLL term (the aux term
    uses per-micro-batch router statistics). stats: summed nll / correct, mean aux loss and router load
    (max / min over experts of tokens-per-expert relative to perfect balance, averaged over layers).
    ``ce_chunk`` > 0 applies the LM head ``ce_chunk`` positions at a time inside the loss (never holding
    [b, n, vocab] fp32 logits, recomputing each chunk's in the backward pass); 0 runs the model's full head.
    """
    A = int(grad_accum_steps)
    aux_loss_coef, top_k = float(config.router_aux_loss_coef), int(config.num_experts_per_tok)

    def micro_loss(params, mb, n_targets):
        model = nnx.merge(graphdef, params)
        out = model.forward(mb["tokens"], segment_ids=mb["segment_ids"], positions=mb["positions"],
                            head=not ce_chunk)
        if ce_chunk:
            nll, _, correct = chunked_cross_entropy_sums(
                out.hidden, model.lm_head[...], mb, chunk=int(ce_chunk), dtype=config.lm_head_dtype,
                precision=config.lm_head_precision)
        else:
            nll, _, correct = cross_entropy_sums(out.logits, mb)
        aux = out.aux_loss
        load = out.router.tokens_per_expert * out.router.tokens_per_expert.shape[-1] / top_k  # [L, E]
        stats = {"nll": nll, "correct": correct, "aux_loss": aux,
                 "router/max_load": jnp.mean(jnp.max(load, -1)), "router/min_load": jnp.mean(jnp.min(load, -1))}
        return nll / n_targets + aux_loss_coef * aux / A, stats

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def loss_and_grads(params, batch):
        n_targets = jnp.maximum(jnp.sum(next_token_targets(batch)[1]), 1.0)
        if A == 1:
            (loss, stats), grads = grad_fn(params, batch, n_targets)
            return loss, stats, grads, n_targets

        def body(carry, mb):
            g_sum, l_sum, s_sum = carry
            (loss, stats), g = grad_fn(params, mb, n_targets)
            return (jax.tree.map(jnp.add, g_sum, g), l_sum + loss, jax.tree.map(jnp.add, s_sum, stats)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        s0 = {k: jnp.zeros((), jnp.float32) for k in _STATS}
        (grads, loss, stats), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), s0), _micro_batches(batch, A))
        stats = {k: v / A if k.startswith(("aux", "router")) else v for k, v in stats.items()}
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        return loss, stats, grads, n_targets

    return loss_and_grads


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule, config: ModelConfig,
                    *, grad_accum_steps: int = 1, state_shardings: dict | None = None, batch_sharding=None,
                    ce_chunk: int = 0):
    """jit(state, batch) -> (state, metrics), the state donated; the loss is make_loss_and_grads'.

    With shardings the state keeps its placement (trace and call it under ``m1jax.sharding.use_mesh``).
    A step whose loss or gradient norm is not finite leaves the state unchanged (metrics["finite"] = 0).
    """
    loss_and_grads = make_loss_and_grads(graphdef, config, grad_accum_steps=grad_accum_steps, ce_chunk=ce_chunk)

    def step(state, batch):
        params = state["params"]
        loss, stats, grads, n_targets = loss_and_grads(params, batch)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": state["step"] + 1}
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        metrics = {
            "loss": stats["nll"] / n_targets, "total_loss": loss, "aux_loss": stats["aux_loss"],
            "accuracy": stats["correct"] / n_targets, "grad_norm": grad_norm, "lr": schedule(state["step"]),
            "targets": n_targets, "finite": finite.astype(jnp.float32),
            "router/max_load": stats["router/max_load"], "router/min_load": stats["router/min_load"],
        }
        return new, metrics

    if state_shardings is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, donate_argnums=0, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, None))
