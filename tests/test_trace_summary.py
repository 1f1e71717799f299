"""experiments/trace_summary.py: reading a perfetto trace's device-stream kernels (synthetic trace; a CPU has none)."""

import gzip
import json
import os

from experiments import trace_summary as ts


def _write_trace(root, events):
    run = os.path.join(root, "plugins", "profile", "run1")
    os.makedirs(run)
    with gzip.open(os.path.join(run, "perfetto_trace.json.gz"), "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_device_stream_kernels_are_grouped_per_call(tmp_path):
    meta = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #7(Compute)"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "XLA Ops"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 1, "args": {"name": "Stream #1"}},
    ]
    kernels = [("gemm_fusion_dot_1", 30.0), ("gemm_fusion_dot_1", 30.0), ("loop_add_fusion", 5.0),
               ("lightning_attention_fwd", 12.0), ("memcpy32_post", 1.0)] * 2  # two calls
    events = meta + [{"ph": "X", "pid": 1, "tid": 7, "name": n, "ts": i, "dur": d} for i, (n, d) in enumerate(kernels)]
    events += [{"ph": "X", "pid": 1, "tid": 8, "name": "fusion.1", "ts": 0, "dur": 99.0},  # derived op line
               {"ph": "X", "pid": 2, "tid": 1, "name": "host_work", "ts": 0, "dur": 99.0}]  # host process
    _write_trace(str(tmp_path), events)
    rows = ts.summarise(ts.trace_events(str(tmp_path)), calls=2)
    assert [r["name"] for r in rows] == ["gemm_fusion_dot_1", "lightning_attention_fwd", "loop_add_fusion",
                                         "memcpy32_post"]
    top = rows[0]
    assert top["us_per_call"] == 60.0 and top["launches_per_call"] == 2.0 and top["mean_us"] == 30.0
    assert [r["category"] for r in rows] == ["gemm", "pallas / other", "fusion", "memcpy / memset"]
    table = ts.markdown_table(rows, 2, "t")
    assert "0.078 ms of kernel time in 5 launches" in table
    assert "`gemm_fusion_dot_1` | gemm | 60.0 | 2.0 | 30.0" in table


def test_a_trace_without_device_streams_says_so(tmp_path):
    _write_trace(str(tmp_path), [{"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
                                 {"ph": "X", "pid": 2, "tid": 1, "name": "host_work", "ts": 0, "dur": 5.0}])
    assert ts.trace_events(str(tmp_path)) == []
    text = ts.markdown_table([], 1, "t", log_dir=str(tmp_path))
    assert "No device stream events" in text and "'/host:CPU'" in text


def test_hlo_sources_name_each_fusion_by_its_op_and_source_line():
    import jax
    import jax.numpy as jnp

    def f(x, y):
        a = jnp.where(x > 0, jnp.sin(x) * y, 0.0)  # line A
        return jnp.sum(a, axis=1) + 1

    line_a = f.__code__.co_firstlineno + 1
    text = jax.jit(f).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
    sources = ts.hlo_sources(text)
    assert sources, "no fusion found in the compiled HLO"
    assert any(f"test_trace_summary.py:{line_a} (" in v for v in sources.values()), sources
    rows = [dict(name=n, category="fusion", us_per_call=1.0, launches_per_call=1.0, mean_us=1.0) for n in sources]
    table = ts.markdown_table(rows, 1, "t", sources=sources)
    assert "| source |" in table and f"test_trace_summary.py:{line_a}" in table
