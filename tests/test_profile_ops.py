"""benchmarks/profile_ops.py: a trace summarised to its top operations."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_ops


def _event(name, start, duration):
    return SimpleNamespace(name=name, start_ns=start, duration_ns=duration)


def _line(name, events):
    return SimpleNamespace(name=name, events=events)


def test_enclosing_events_are_not_counted_twice():
    line = _line("XLA Ops", [
        _event("while.1", 0, 100), _event("fusion.2", 0, 40), _event("gemm.3", 50, 30),
        _event("fusion.2", 120, 10), _event("ThreadpoolListener::Record", 130, 5)])
    assert profile_ops._add_up([line]) == {"fusion.2": 50, "gemm.3": 30}


def test_device_ops_line_is_preferred_to_kernels_and_host():
    profile = SimpleNamespace(planes=[
        SimpleNamespace(name="/host:CPU", lines=[_line("tf_XLA_1", [_event("host", 0, 9)])]),
        SimpleNamespace(name="/device:GPU:0", lines=[
            _line("Stream #1", [_event("kernel_a", 0, 7)]),
            _line("XLA Ops", [_event("fusion.1", 0, 5)])])])
    assert profile_ops.operation_times(profile) == ({"fusion.1": 5}, "XLA Ops")
    profile.planes[1].lines.pop()
    assert profile_ops.operation_times(profile) == ({"kernel_a": 7}, "kernels")
    profile.planes.pop()
    assert profile_ops.operation_times(profile) == ({"host": 9}, "host threads")


def test_summary_is_per_step_and_shares_add_up():
    summary = profile_ops.summarise({"a": 6e6, "b": 2e6}, "XLA Ops", steps=2, wall_seconds=0.01,
                                    count=5)
    assert summary["busy_ms_per_step"] == pytest.approx(4.0)
    assert summary["wall_ms_per_step"] == pytest.approx(5.0)
    assert summary["busy_fraction"] == pytest.approx(0.8)
    assert [op["name"] for op in summary["top"]] == ["a", "b"]
    assert [op["ms_per_step"] for op in summary["top"]] == pytest.approx([3.0, 1.0])
    assert sum(op["share"] for op in summary["top"]) == pytest.approx(1.0)


def test_a_real_trace_names_the_step_operations():
    f = jax.jit(lambda x: jnp.tanh(x @ x) @ x)
    x = jnp.ones((256, 256))
    summary = profile_ops.trace_top_ops(lambda: f(x), steps=2, count=4)
    assert summary["source"] == "host threads"
    assert 0 < len(summary["top"]) <= 4
    assert summary["busy_ms_per_step"] > 0
    assert all(op["ms_per_step"] > 0 for op in summary["top"])


def test_launch_calls_count_the_host_launch_api_only():
    profile = SimpleNamespace(planes=[
        SimpleNamespace(name="/host:CUPTI", lines=[_line("thread 1", [
            _event("cuLaunchKernelEx", 0, 10), _event("cuLaunchKernel", 20, 5),
            _event("cuMemcpyAsync", 30, 7)])]),
        SimpleNamespace(name="/device:GPU:0", lines=[
            _line("Stream #1", [_event("cuLaunchKernel_lookalike_kernel", 0, 100)])])])
    assert profile_ops.launch_calls(profile) == (2, 15)
