"""Sharded-vs-single-device checks, run by tests/test_sharding.py in a subprocess with 16 fake CPU
devices (the pytest process already initialised jax with one device). Prints one JSON line per check
and "ok" at the end; exits non-zero on the first mismatch.

  model   for each mesh in MESHES: logits, loss and every gradient of a 2-layer tiny model (fp32,
          packed batch, expert-parallel MoE) against the single-device result with the dense-MoE
          oracle; greedy generation (prefill + decode with caches) on a 4-axis mesh against one
          device; a checkpoint saved from one mesh restores onto another, values identical.
  moe     the expert-parallel MoE (all-to-all dispatch) against the dense path on one device, forward and
          gradients, with skewed routing (most pairs on one expert) and exact router ties, and with every
          pair sent to one device (its receive buffer filled to the worst case); the CPU exchange against
          ragged_all_to_all's documented semantics; the GPU/TPU exchange traces and lowers (fwd + bwd).
  rl      one RL update (CISPO, 2 micro-batches) and the learner's log-probs of a ragged rollout batch on an
          8-device data x fsdp x tensor mesh (params / Adam state placed by the rules table) against one device.
  layers  context-parallel lightning attention (4 devices) with packed segments and an initial
          state, outputs / final state / gradients; the fused qkv projection split over ``tensor``
          needs no communication (whole heads per shard); the H*D RMSNorm gets its all-reduce; the softmax
          layer's packed-document kernel under shard_map (heads split alike, kv heads repeated, batch split).
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m1jax import MiniMaxM1, ModelConfig
from m1jax import sharding as sh

MESHES = {
    "data": dict(data=8, fsdp=1),
    "fsdp_tensor": dict(fsdp=2, tensor=4),
    "expert_data": dict(expert=4, data=2, fsdp=1),
    "all4": dict(data=2, fsdp=2, expert=2, tensor=2),
    "context": dict(context=4, tensor=2, expert=2, fsdp=1),
}
TOL = 2e-5  # max |a - b| / max |b|, fp32


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def batch_of(config, b=8, n=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (b, n)).astype(np.int32)
    cut = rng.integers(1, n, b)  # two packed documents per row (the second may run off the end)
    segment_ids = np.where(np.arange(n)[None] < cut[:, None], 1, 2).astype(np.int32)
    return jnp.asarray(tokens), jnp.asarray(segment_ids)


def loss_fn(params, graphdef, tokens, segment_ids, aux_coef):
    out = nnx.merge(graphdef, params).forward(tokens, segment_ids=segment_ids)
    logp = jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    w = (segment_ids[:, 1:] == segment_ids[:, :-1]).astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.sum(w) + aux_coef * out.aux_loss, out.logits


def make_step(graphdef, aux_coef, in_shardings=None, out_shardings=None):
    def step(params, tokens, segment_ids):
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, graphdef, tokens, segment_ids,
                                                                          aux_coef)
        return logits, loss, grads

    return jax.jit(step, in_shardings=in_shardings, out_shardings=out_shardings)


def set_moe(model, impl):
    for layer in model.layers:
        layer.block_sparse_moe.impl = impl
    return model


def check_model(ckpt_dir: str):
    config = ModelConfig.tiny(router_aux_loss_coef=0.01, num_hidden_layers=2, attn_type_list=(0, 1))
    model = MiniMaxM1(config, rngs=nnx.Rngs(0))
    tokens, segment_ids = batch_of(config)
    graphdef, params = nnx.split(set_moe(model, "dense"), nnx.Param)
    params = params.to_pure_dict()
    ref_logits, ref_loss, ref_grads = jax.device_get(make_step(graphdef, config.router_aux_loss_coef)(
        params, tokens, segment_ids))

    graphdef_ep = nnx.split(set_moe(model, "ep"), nnx.Param)[0]
    meshes = {}
    for name, sizes in MESHES.items():
        t0 = time.perf_counter()
        n_dev = int(np.prod(list(sizes.values())))
        mesh = meshes[name] = sh.make_mesh(sh.MeshConfig(**sizes), devices=jax.devices()[:n_dev])
        p_shard = sh.param_shardings(model, mesh)
        _check_loader_callback(model, mesh, p_shard)
        batch_shard = jax.sharding.NamedSharding(mesh, sh.logical_to_spec(("batch", "seq"), tokens.shape, mesh))
        with sh.use_mesh(mesh):
            step = make_step(graphdef_ep, config.router_aux_loss_coef,
                             in_shardings=(p_shard, batch_shard, batch_shard), out_shardings=(None, None, p_shard))
            sharded = jax.device_put(params, p_shard)
            compiled = step.lower(sharded, tokens, segment_ids).compile()
            logits, loss, grads = jax.device_get(compiled(sharded, tokens, segment_ids))
        # Tokens split over ``expert`` travel to their experts' devices by all-to-all (the rules split
        # this batch over ``expert`` whenever the mesh has one).
        exchange = _collectives(compiled)["all-to-all"]
        errs = {"logits": rel_err(logits, ref_logits), "loss": rel_err(loss, ref_loss),
                "grads": max(rel_err(g, r) for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads),
                                                            strict=True))}
        print(json.dumps({"mesh": name, "sizes": sizes, **errs, "all_to_all": exchange,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        if max(errs.values()) > TOL:
            sys.exit(f"mesh {name}: sharded result differs from one device: {errs}")
        if bool(exchange) != (sizes.get("expert", 1) > 1):
            sys.exit(f"mesh {name}: {exchange} all-to-all ops; the expert-parallel dispatch needs them exactly "
                     "when the mesh has an expert axis")

    # Sampling (ragged prefill + while_loop decode, KV caches and lightning states) on a mesh, params in place.
    from m1jax.sampling import sample

    # Ragged prompts; as many as the batch (the ep dispatch needs the rows to split over data x fsdp x expert).
    prompts = [np.asarray(tokens[i, : 8 - i % 3]).tolist() for i in range(tokens.shape[0])]
    key = jax.random.key(0)
    set_moe(model, "grouped")
    ref = sample(model, prompts, key, max_new_tokens=4, temperature=1.0, num_samples=2)
    ref_tokens, ref_logp = jax.device_get((ref.tokens, ref.logprobs))
    mesh = meshes["all4"]
    sharded_model = sh.shard_model(set_moe(nnx.clone(model), "ep"), mesh)
    with sh.use_mesh(mesh):
        got = sample(sharded_model, prompts, key, max_new_tokens=4, temperature=1.0, num_samples=2)
        got_tokens, got_logp = jax.device_get((got.tokens, got.logprobs))
    err = rel_err(got_logp, ref_logp)
    print(json.dumps({"sample": "all4", "tokens_equal": bool((got_tokens == ref_tokens).all()), "logp": err}),
          flush=True)
    if not (got_tokens == ref_tokens).all() or err > TOL:
        sys.exit(f"sharded sampling differs: tokens {got_tokens} vs {ref_tokens}, log-prob error {err}")

    # Save from the fsdp x tensor mesh, restore onto the expert x data mesh.
    src, dst = meshes["fsdp_tensor"], meshes["expert_data"]
    save, restore = _checkpoint_fns(config)
    save(ckpt_dir, jax.device_put(params, sh.param_shardings(model, src)))
    restored = restore(ckpt_dir, sh.abstract_params(model, dst))
    want = jax.tree.leaves(sh.param_shardings(model, dst))
    for got, ref, s in zip(jax.tree.leaves(restored), jax.tree.leaves(params), want, strict=True):
        if not got.sharding.is_equivalent_to(s, got.ndim):
            sys.exit(f"restored sharding {got.sharding} != {s}")
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    print(json.dumps({"checkpoint": "fsdp_tensor -> expert_data", "ok": True}), flush=True)


def _check_loader_callback(model, mesh, p_shard):
    """The convert.load_params callback places every parameter exactly as param_shardings does."""
    from m1jax.convert.hf import get_param

    loader = sh.param_sharding(mesh, model.config)
    flat = jax.tree_util.tree_flatten_with_path(p_shard)[0]
    for path, want in flat:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        var = get_param(model, name)
        got = loader(name, var.get_metadata()["logical_axes"], var.get_value().shape)
        if got.spec != want.spec:
            sys.exit(f"loader sharding of {name}: {got.spec} != {want.spec}")


def _checkpoint_fns(config):
    """(save(path, params), restore(path, abstract params with shardings)): m1jax.train's params
    checkpoints when present, else plain orbax."""
    try:
        from m1jax.train.checkpoint import restore_params_dict, save_params
    except ImportError:
        import orbax.checkpoint as ocp

        def save(path, params):
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(path, params)

        def restore(path, target):
            with ocp.StandardCheckpointer() as ckptr:
                return ckptr.restore(path, target)

        return save, restore
    return (lambda path, params: save_params(path, params, config)), restore_params_dict


def _collectives(compiled) -> dict:
    text = compiled.as_text()
    return {op: text.count(f" {op}(") + text.count(f" {op}-start(")
            for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")}


def ragged_all_to_all_numpy(operand, output, in_offsets, send_sizes, out_offsets):
    """jax.lax.ragged_all_to_all as its docstring defines it, over the leading (device) dim of numpy inputs."""
    output = output.copy()
    n, n_slices = in_offsets.shape
    for src in range(n):
        for i in range(n_slices):
            dst, size = i // (n_slices // n), send_sizes[src, i]
            output[dst, out_offsets[src, i]:out_offsets[src, i] + size] = \
                operand[src, in_offsets[src, i]:in_offsets[src, i] + size]
    return output


def _random_ragged_exchange(rng, n, per_dev, m, out_len):
    """Consistent random arguments of a ragged all-to-all over n devices: every device sends per_dev
    slices to each device, taken from its operand rows in a shuffled order with gaps, written into each
    receiver's rows in another shuffled order with gaps (the layouts the MoE's return trip uses)."""
    counts = rng.integers(0, 4, (n, n, per_dev))  # [src, dst, slice]
    while counts.sum((1, 2)).max() > m or counts.sum((0, 2)).max() > out_len:
        counts = counts // 2

    def layout(sizes, length):  # sizes [slices] -> offsets: shuffled order, leftover space as random gaps
        offsets, cursor = np.zeros(len(sizes), np.int32), 0
        gaps = rng.multinomial(length - sizes.sum(), np.ones(len(sizes) + 1) / (len(sizes) + 1))
        for j in rng.permutation(len(sizes)):
            cursor += gaps[j]
            offsets[j], cursor = cursor, cursor + sizes[j]
        return offsets

    send = counts.reshape(n, -1).astype(np.int32)
    in_off = np.stack([layout(send[s], m) for s in range(n)])
    out_off = np.zeros_like(send)
    for d in range(n):  # receiver d's layout of the slices (src, slice) it gets
        off = layout(counts[:, d].reshape(-1), out_len).reshape(n, per_dev)
        out_off[:, d * per_dev:(d + 1) * per_dev] = off
    recv = counts.transpose(1, 0, 2).reshape(n, -1).astype(np.int32)  # [dst, (src, slice)]
    return send, in_off, out_off, recv


def check_moe():
    from jax.sharding import PartitionSpec as P

    from m1jax.model import moe_ep
    from m1jax.model.moe import MoE

    # The CPU exchange computes what ragged_all_to_all is documented to compute (values and slices that
    # are not in order or contiguous; rows nobody writes stay as the output buffer had them: zero).
    rng = np.random.default_rng(0)
    n, per_dev, m, out_len, d = 4, 3, 20, 26, 5
    mesh = sh.make_mesh(sh.MeshConfig(expert=n, fsdp=1), devices=jax.devices()[:n])
    for _ in range(3):
        send, in_off, out_off, recv = _random_ragged_exchange(rng, n, per_dev, m, out_len)
        operand = rng.standard_normal((n, m, d)).astype(np.float32)
        want = ragged_all_to_all_numpy(operand, np.zeros((n, out_len, d), np.float32), in_off, send, out_off)

        def body(x, io, ss, oo, rs):
            return moe_ep._dense_all_to_all(x[0], out_len, io[0], ss[0], oo[0], rs[0], ("expert",))[None]

        spec = P("expert")
        got = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec))(
            operand, in_off, send, out_off, recv)
        np.testing.assert_array_equal(np.asarray(got), want)
    print(json.dumps({"dense_exchange_vs_ragged_semantics": 3, "ok": True}), flush=True)

    # The MoE layer, ep on a mesh vs dense on one device. 8 experts (top 2): expert 5's router column
    # dominates (3/4 of all pairs land on it, 7/8 on its device at expert=4), experts 1 and 2 have
    # identical columns (exact probability ties: the lower index must win on both paths).
    config = ModelConfig.tiny(num_local_experts=8, num_experts_per_tok=2)
    moe = MoE(config, rngs=nnx.Rngs(0))
    for name in ("w1", "w3", "w2"):  # unit-scale activations
        w = getattr(moe, name)
        w[...] = w[...] / (0.02 * np.sqrt(w.shape[1]))
    g = np.array(moe.gate[...])
    g[:, 2] = g[:, 1]
    g[:, 5] += 0.4
    moe.gate[...] = jnp.asarray(g)
    x = jnp.asarray(np.abs(rng.standard_normal((8, 12, config.hidden_size))).astype(np.float32))

    def moe_loss(moe, x, impl):
        y, stats = moe(x, impl=impl)
        return jnp.sum(jnp.sin(y) * y), (y, stats.tokens_per_expert)

    grad = nnx.jit(nnx.value_and_grad(moe_loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (_, (ref_y, load)), ref_grads = grad(moe, x, "dense")
    load = np.asarray(load)
    if not (load[5] > 0.7 and load[1] > 0 and load[2] == 0):
        sys.exit(f"routing is not skewed / tied as intended: tokens per expert {load}")
    for sizes in (dict(expert=4, data=2, fsdp=1), dict(expert=8, fsdp=1), dict(fsdp=2, expert=2, tensor=2),
                  dict(expert=2, tensor=4, fsdp=1), dict(expert=4, context=2, fsdp=1)):
        mesh = sh.make_mesh(sh.MeshConfig(**sizes), devices=jax.devices()[:int(np.prod(list(sizes.values())))])
        sharded = sh.shard_model(nnx.clone(moe), mesh)
        with sh.use_mesh(mesh):
            (_, (y, got_load)), grads = grad(sharded, x, "ep")
            comm = _collectives(jax.jit(lambda x, m=sharded: m(x, impl="ep")[0]).lower(x).compile())
        errs = {"y": rel_err(y, ref_y), "grads": max(rel_err(a, b) for a, b in zip(
            jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True))}
        print(json.dumps({"moe_ep": sizes, **errs, "all_to_all": comm["all-to-all"]}), flush=True)
        if max(errs.values()) > TOL or not comm["all-to-all"] or not np.array_equal(got_load, load):
            sys.exit(f"expert-parallel MoE on {sizes}: errors {errs}, collectives {comm}, load {got_load} vs {load}")

    # Every pair on the experts of one device: its receive buffer (expert x own pairs rows) fills up.
    w1, w3, w2 = moe._expert_params()
    b, s, k = x.shape[0], x.shape[1], 2
    experts = jnp.broadcast_to(jnp.array([1, 0], jnp.int32), (b, s, k))  # both on device 0 of 4 (2 experts each)
    weights = jax.nn.softmax(jnp.asarray(rng.standard_normal((b, s, k)), jnp.float32), -1)

    def fn_loss(exchange, x, weights, w1, w3, w2):
        return jnp.sum(jnp.cos(moe_ep.expert_parallel(moe._expert_ffn, x, weights, experts, w1, w3, w2,
                                                      exchange=exchange)))

    fn_grad = jax.jit(jax.value_and_grad(fn_loss, argnums=(1, 2, 3, 4, 5)), static_argnums=0)
    want = fn_grad("dense", x, weights, w1, w3, w2)  # no mesh: the local grouped FFN
    mesh = sh.make_mesh(sh.MeshConfig(expert=4, data=2, fsdp=1), devices=jax.devices()[:8])
    with sh.use_mesh(mesh):
        got = fn_grad("dense", x, weights, w1, w3, w2)
        # The GPU / TPU exchange (ragged_all_to_all, which XLA:CPU cannot compile) traces, differentiates
        # and lowers for CUDA: forward dispatch + return, and their transposes in the backward pass.
        text = fn_grad.trace("ragged", x, weights, w1, w3, w2).lower(lowering_platforms=("cuda",)).as_text()
    err = max(rel_err(a, r) for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))
    ragged = text.count("ragged_all_to_all")
    print(json.dumps({"all_pairs_to_one_device": err, "ragged_all_to_all_in_cuda_lowering": ragged}), flush=True)
    if err > TOL or ragged != 4:
        sys.exit(f"all pairs on one device: error {err}; ragged_all_to_all ops in the CUDA lowering: {ragged}")


def check_layers():
    import pallas_kernels
    from m1jax.model import lightning_cp
    from m1jax.model.layers import dense
    from m1jax.model.lightning import LightningAttention

    # Context parallelism on 4 devices: outputs, final state and gradients (q, k, v, initial state).
    b, n, H, D = 2, 32, 4, 8
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (0.5 * jax.random.normal(kk, (b, n, H, D)) for kk in keys[:3])
    s0 = jax.random.normal(keys[3], (b, H, D, D))
    decay = jnp.array([0.5, 0.1, 0.02, 0.001])
    seg = jnp.array([[1] * 5 + [2] * 20 + [3] * 7, [1] * 32], jnp.int32)  # boundaries inside and across shards

    def loss(fn, q, k, v, s0, seg):
        o, st = fn(q, k, v, decay, initial_state=s0, segment_ids=seg, block_size=4, impl="reference")
        return jnp.sum(jnp.sin(o)) + jnp.sum(st ** 2), (o, st)

    def plain(*a, **kw):
        return pallas_kernels.lightning_attention(*a, return_state=True, **kw)

    grad = jax.value_and_grad(loss, argnums=(1, 2, 3, 4), has_aux=True)
    for use_seg, use_s0 in ((False, False), (True, True)):
        args = (q, k, v, s0 if use_s0 else None, seg if use_seg else None)
        ref = jax.jit(grad, static_argnums=0)(plain, *args)
        for sizes in (dict(context=4, fsdp=1), dict(context=2, tensor=2, fsdp=1)):
            mesh = sh.make_mesh(sh.MeshConfig(**sizes), devices=jax.devices()[:4])
            with sh.use_mesh(mesh):
                got = jax.jit(grad, static_argnums=0)(lightning_cp.lightning_attention, *args)
            errs = [rel_err(a, r) for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True)]
            print(json.dumps({"context_parallel": sizes, "segments": use_seg, "initial_state": use_s0,
                              "max_rel_err": max(errs)}), flush=True)
            if max(errs) > TOL:
                sys.exit(f"context-parallel lightning attention differs: {sizes} {errs}")

    # The fused qkv projection [hidden, 3*H*D] split over ``tensor`` (T | H) leaves whole heads per
    # shard: projecting and splitting into heads needs no communication at all.
    config = ModelConfig.tiny(num_attention_heads=8)
    layer = LightningAttention(config, 0, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 16, config.hidden_size))
    ref_y, _ = nnx.jit(lambda m, x: m(x))(layer, x)
    for tensor in (2, 4, 8):
        mesh = sh.make_mesh(sh.MeshConfig(tensor=tensor, fsdp=1), devices=jax.devices()[:tensor])
        sharded = sh.shard_model(nnx.clone(layer), mesh)
        spec = sharded.qkv_proj[...].sharding.spec
        H, D = config.num_attention_heads, config.head_dim

        def heads(w, x, H=H, D=D):
            qkv = jax.nn.silu(dense(x, w, jnp.float32)).reshape(*x.shape[:2], H, 3 * D)
            return sh.constrain(qkv, ("batch", "seq", "heads", None))

        with sh.use_mesh(mesh):
            comm = _collectives(jax.jit(heads).lower(sharded.qkv_proj[...], x).compile())
            y, _ = nnx.jit(lambda m, x: m(x))(sharded, x)
        err = rel_err(y, ref_y)
        print(json.dumps({"qkv_tensor": tensor, "qkv_spec": str(spec), "collectives": comm,
                          "layer_rel_err": err}), flush=True)
        if spec[1] != "tensor" or any(comm.values()) or err > TOL:
            sys.exit(f"qkv split over tensor={tensor}: spec {spec}, collectives {comm}, layer error {err}")

    # The lightning output norm is an RMSNorm over all H*D features: with heads split over ``tensor``
    # XLA's partitioner adds the cross-shard sum of squares (an all-reduce); the layer output above
    # matched the unsharded one, so that reduction is right.
    mesh = sh.make_mesh(sh.MeshConfig(tensor=4, fsdp=1), devices=jax.devices()[:4])
    norm = sh.shard_model(nnx.clone(layer.norm), mesh)
    h = jax.random.normal(jax.random.key(2), (2, 16, config.num_attention_heads * config.head_dim))
    hs = jax.device_put(h, jax.sharding.NamedSharding(mesh, sh.logical_to_spec((None, None, "heads"), h.shape, mesh)))
    with sh.use_mesh(mesh):
        graphdef, state = nnx.split(norm)
        apply = jax.jit(lambda state, h: nnx.merge(graphdef, state)(h))
        out = apply(state, hs)
        comm = _collectives(apply.lower(state, hs).compile())
    err = rel_err(out, layer.norm(h))
    print(json.dumps({"lightning_norm_tensor": 4, "collectives": comm, "rel_err": err}), flush=True)
    if err > TOL or not comm["all-reduce"]:
        sys.exit(f"H*D RMSNorm under tensor parallelism: error {err}, collectives {comm}")


def check_segment_attention():
    """The softmax layer's packed-document kernel (impl="segment"; interpret mode on the CPU) under shard_map:
    query and kv heads split alike (tensor 2), kv heads repeated to their query heads where there are fewer than
    the tensor axis' devices (tensor 4, 2 kv heads), batch and heads split together; outputs and input gradients
    against the einsum path on one device."""
    from m1jax.model.attention import SoftmaxAttention

    config = ModelConfig.tiny(num_attention_heads=4, num_key_value_heads=2)
    layer = SoftmaxAttention(config, 1, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 24, config.hidden_size))
    pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
    seg = jnp.array([[1] * 7 + [2] * 10 + [3] * 7, [4] * 24], jnp.int32)

    def value_and_grad(m, x):
        return jax.value_and_grad(lambda x: jnp.sum(jnp.sin(m(x, positions=pos, segment_ids=seg)[0])))(x)

    layer.impl = "einsum"
    ref = nnx.jit(value_and_grad)(layer, x)
    for sizes in (dict(tensor=2, fsdp=1), dict(tensor=4, fsdp=1), dict(data=2, tensor=2, fsdp=1)):
        n = int(np.prod(list(sizes.values())))
        mesh = sh.make_mesh(sh.MeshConfig(**sizes), devices=jax.devices()[:n])
        sharded = sh.shard_model(nnx.clone(layer), mesh)
        sharded.impl = "segment"
        with sh.use_mesh(mesh):
            got = nnx.jit(value_and_grad)(sharded, x)
        errs = [rel_err(a, r) for a, r in zip(got, ref, strict=True)]
        print(json.dumps({"segment_attention": sizes, "max_rel_err": max(errs)}), flush=True)
        if max(errs) > TOL:
            sys.exit(f"segment attention under {sizes} differs from one device: {errs}")


def check_rl():
    import ml_collections

    from m1jax.rl.learner import learner_batch, make_logprob_fn, make_update_step
    from m1jax.train.optimizer import make_optimizer
    from m1jax.train.placement import train_state_shardings
    from m1jax.train.step import abstract_train_state, init_train_state, model_graphdef

    config = ModelConfig.tiny(num_hidden_layers=2, attn_type_list=(0, 1), vocab_size=64)
    model = MiniMaxM1(config, rngs=nnx.Rngs(0))
    graphdef, params = model_graphdef(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    optim = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, min_lr_ratio=1.0, b1=0.9, b2=0.95, eps=1e-15,
                                           weight_decay=0.0, no_decay="norm", clip_norm=1.0))
    tx, schedule = make_optimizer(optim, 10)
    rng = np.random.default_rng(0)
    rows, T = 16, 6
    prompts = [rng.integers(0, 64, int(rng.integers(1, 12))).tolist() for _ in range(rows)]
    batch = learner_batch(prompts, rng.integers(0, 64, (rows, T)), rng.integers(1, T + 1, rows),
                          -rng.uniform(0.5, 3, (rows, T)), rng.standard_normal(rows))
    batch.pop("sampler_logp")
    batch["old_logp"] = np.asarray(make_logprob_fn(graphdef, 0.9)(params, batch)) + rng.uniform(-0.3, 0.3, (rows, T))
    kw = dict(loss="cispo", loss_kwargs=dict(eps_high=0.2), temperature=0.9, grad_accum_steps=2)

    fresh = init_train_state(jax.tree.map(jnp.copy, params), tx)  # the step donates its state
    ref_state, ref_m = make_update_step(graphdef, tx, schedule, **kw)(fresh, batch)
    ref_logp = make_logprob_fn(graphdef, 0.9, micro_batches=2)(ref_state["params"], batch)
    ref = jax.device_get((ref_state["params"], ref_m, ref_logp))

    mesh = sh.make_mesh(dict(data=2, fsdp=2, tensor=2))
    shardings = train_state_shardings(model, abstract_train_state(params, tx), mesh)
    with sh.use_mesh(mesh):
        state = init_train_state(jax.device_put(params, shardings["params"]), tx, shardings)
        state, m = make_update_step(graphdef, tx, schedule, state_shardings=shardings, **kw)(state, batch)
        logp = make_logprob_fn(graphdef, 0.9, micro_batches=2)(state["params"], batch)
        sharded_leaves = sum(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
                             for x in jax.tree.leaves(state["params"]))
        got = jax.device_get((state["params"], m, logp))
    pairs = zip(jax.tree.leaves(got[0]), jax.tree.leaves(ref[0]), strict=True)
    errs = {"params": max(rel_err(g, r) for g, r in pairs),
            "loss": rel_err(got[1]["loss"], ref[1]["loss"]),
            "grad_norm": rel_err(got[1]["grad_norm"], ref[1]["grad_norm"]),
            "logp": rel_err(got[2], ref[2])}
    print(json.dumps({"rl_update": "data2_fsdp2_tensor2", "sharded_param_leaves": int(sharded_leaves), **errs}),
          flush=True)
    if max(errs.values()) > TOL or not sharded_leaves:
        sys.exit(f"sharded RL update differs from one device: {errs} ({sharded_leaves} sharded leaves)")


if __name__ == "__main__":
    if sys.argv[1] == "model":
        check_model(sys.argv[2])
    elif sys.argv[1] == "moe":
        check_moe()
    elif sys.argv[1] == "rl":
        check_rl()
    elif sys.argv[1] == "layers":
        check_layers()
        check_segment_attention()
    else:
        sys.exit(f"unknown check {sys.argv[1]!r}")
    print("ok")
