"""Orbax checkpoints (params-only and training), TensorBoard event files, device peaks."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from m1jax import MiniMaxM1, ModelConfig
from m1jax.train.checkpoint import TrainCheckpointer, check_params_fit, load_config, restore_params, save_params
from m1jax.train.flops import device_peak_flops, mfu
from m1jax.train.step import abstract_train_state, init_train_state
from m1jax.train.tensorboard import crc32c, encode_event, read_records, SummaryWriter

CONFIG = ModelConfig.tiny(hidden_size=32, intermediate_size=32, num_hidden_layers=2, attn_type_list=(0, 1))


def params_of(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_params_then_restore_params_roundtrip(tmp_path):
    model = MiniMaxM1(CONFIG, rngs=nnx.Rngs(3))
    path = save_params(str(tmp_path / "ckpt"), model)
    assert load_config(path) == CONFIG
    restored = restore_params(path)
    assert restored.config == CONFIG
    assert_trees_equal(params_of(restored), params_of(model))
    with pytest.raises(ValueError, match="already exists"):
        save_params(path, model)  # refuses to overwrite without force
    save_params(path, model, force=True)


def test_init_from_of_another_shape_is_named_before_any_work(tmp_path):
    from m1jax.train.step import model_graphdef

    path = save_params(str(tmp_path / "ckpt"), MiniMaxM1(CONFIG, rngs=nnx.Rngs(0)))
    check_params_fit(path, model_graphdef(CONFIG.replace(dtype="bfloat16"))[1])  # same shapes: fine
    with pytest.raises(ValueError, match=r"init_from=.* another shape .*embed_tokens.*\(128, 32\) there, "
                                         r"\(128, 48\) here"):
        check_params_fit(path, model_graphdef(CONFIG.replace(hidden_size=48))[1])
    with pytest.raises(ValueError, match="init_from=.*no m1jax checkpoint"):
        check_params_fit(str(tmp_path / "nothing"), model_graphdef(CONFIG)[1])


def test_restore_params_casts_to_a_requested_param_dtype(tmp_path):
    model = MiniMaxM1(CONFIG, rngs=nnx.Rngs(0))
    path = save_params(str(tmp_path / "ckpt"), model)
    bf16 = restore_params(path, CONFIG.replace(param_dtype="bfloat16"))
    assert bf16.lm_head[...].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16.lm_head[...], np.float32), np.asarray(model.lm_head[...]), rtol=1e-2)


def test_train_checkpointer_roundtrip_keep_last_and_params_from_a_workdir(tmp_path):
    params = nnx.to_pure_dict(nnx.state(MiniMaxM1(CONFIG, rngs=nnx.Rngs(1)), nnx.Param))
    tx = optax.adamw(1e-3)
    state = init_train_state(params, tx)
    ckpt = TrainCheckpointer(str(tmp_path / "checkpoints"), keep=2)
    for step in (1, 2, 3):
        state = {**state, "step": jnp.asarray(step, jnp.int32)}
        ckpt.save(step, state, {"doc": 10 * step, "offset": step}, CONFIG)
    ckpt.wait()
    assert ckpt.latest_step() == 3 and sorted(ckpt.manager.all_steps()) == [2, 3]
    restored, data = ckpt.restore(3, abstract_train_state(jax.eval_shape(lambda: params), tx))
    ckpt.close()
    assert data == {"doc": 30, "offset": 3} and int(restored["step"]) == 3
    assert_trees_equal(restored, jax.tree.map(np.asarray, state))
    # a training workdir (its latest step) is also a params checkpoint
    model = restore_params(str(tmp_path))
    assert_trees_equal(params_of(model), jax.tree.map(np.asarray, params))
    with pytest.raises(FileNotFoundError, match="no m1jax checkpoint"):
        restore_params(str(tmp_path / "nothing_here"))


def test_tensorboard_records_are_valid_tfrecords(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    w = SummaryWriter(str(tmp_path))
    w.scalars(7, {"loss": 1.5, "router/max_load": 2.0})
    w.close()
    records = read_records(w.path)
    assert records[0] == encode_event(0, _wall_time(records[0]), file_version="brain.Event:2")
    assert b"loss" in records[1] and b"router/max_load" in records[1] and np.float32(1.5).tobytes() in records[1]
    resumed = SummaryWriter(str(tmp_path), purge_from_step=5)  # a resumed run: TensorBoard drops steps >= 5
    resumed.close()
    assert read_records(resumed.path)[1].endswith(b"\x3a\x02\x08\x01")  # session_log {status: START}


def test_tensorboard_reads_our_events_and_drops_a_killed_runs_later_steps(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    first = SummaryWriter(str(tmp_path))
    for step in range(1, 16):
        first.scalars(step, {"loss": 1.0})
    first.close()
    resumed = SummaryWriter(str(tmp_path), purge_from_step=11)  # resumed from the step-10 checkpoint
    for step in range(11, 21):
        resumed.scalars(step, {"loss": 2.0})
    resumed.close()
    ea = accumulator.EventAccumulator(str(tmp_path))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("loss")] == [(s, 1.0) for s in range(1, 11)] + [
        (s, 2.0) for s in range(11, 21)]


def _wall_time(record: bytes) -> float:
    return float(np.frombuffer(record[1:9], np.float64)[0])


def test_device_peaks_and_mfu():
    def dev(kind):
        return types.SimpleNamespace(device_kind=kind)

    assert device_peak_flops(dev("NVIDIA H100 80GB HBM3")) == 989e12
    assert device_peak_flops(dev("NVIDIA H100 PCIe"), "bfloat16") == 756e12
    assert device_peak_flops(dev("NVIDIA H200"), "float32") == 494e12
    assert device_peak_flops(dev("TPU v5 lite")) == 197e12
    assert device_peak_flops(dev("cpu")) is None and mfu(1e12, None) is None
    assert mfu(4.945e14, 989e12) == pytest.approx(0.5)
