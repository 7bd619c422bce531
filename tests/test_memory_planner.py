"""The memory planner (benchmarks/memory.py) on tiny presets, and the memory fixes it proves:
the fused depth cross-entropy (same values and gradients, one logits-sized buffer fewer) and
rematerialisation (fewer temporary bytes)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_jax import config_lib
from fsq_jax.train import sharding
from fsq_jax.train.loop import abstract_state
from fsq_jax.train.validate import resolve_task
from uvim.outputs.base import fused_softmax_cross_entropy, softmax_cross_entropy

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("memory_planner", ROOT / "benchmarks/memory.py")
memory = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("memory_planner", memory)  # its dataclass looks its module up
_spec.loader.exec_module(memory)


def _mesh(devices: int = 2):
    return sharding.create_mesh(jax.devices()[:devices])


# -- the fused cross-entropy --------------------------------------------------------------------


def _logits_and_labels(shape=(2, 16, 16, 256)):
    logits = 4.0 * jax.random.normal(jax.random.key(0), shape)
    labels = jax.random.randint(jax.random.key(1), shape[:-1], 0, shape[-1])
    labels = labels.reshape(-1).at[0].set(0).at[1].set(shape[-1] - 1).reshape(labels.shape)
    return logits, labels


def test_fused_cross_entropy_equals_the_plain_one():
    logits, labels = _logits_and_labels()
    plain = jax.jit(softmax_cross_entropy)(logits, labels)
    fused = jax.jit(fused_softmax_cross_entropy)(logits, labels)
    assert fused.dtype == jnp.float32 and fused.shape == labels.shape
    np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=1e-6)  # float32 rounding at most

    weights = jax.random.uniform(jax.random.key(2), labels.shape)  # a non-uniform cotangent
    grad = lambda ce: jax.jit(jax.grad(lambda x: jnp.sum(weights * ce(x, labels))))(logits)
    np.testing.assert_allclose(grad(fused_softmax_cross_entropy), grad(softmax_cross_entropy),
                               rtol=1e-5, atol=1e-7)


def test_fused_cross_entropy_gradient_is_softmax_minus_one_hot_in_the_logits_dtype():
    logits, labels = _logits_and_labels((3, 5))
    grad = jax.grad(lambda x: jnp.sum(fused_softmax_cross_entropy(x, labels)))(logits)
    expected = jax.nn.softmax(logits) - jax.nn.one_hot(labels, 5)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
    bf16 = jax.grad(lambda x: jnp.sum(fused_softmax_cross_entropy(x, labels)))(
        logits.astype(jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16


def test_fused_cross_entropy_keeps_one_logits_sized_buffer_fewer():
    """XLA's buffer assignment of loss + gradient: the plain cross-entropy needs a float32
    logits-sized temporary (the softmax kept for the backward pass), the fused one none."""
    logits, labels = _logits_and_labels((4, 32, 32, 256))
    logits_bytes = logits.size * 4

    def temp_bytes(ce):
        fn = jax.value_and_grad(lambda scale, x: jnp.mean(ce(scale * x, labels)), argnums=(0, 1))
        return jax.jit(fn).lower(1.0, logits).compile().memory_analysis().temp_size_in_bytes

    plain, fused = temp_bytes(softmax_cross_entropy), temp_bytes(fused_softmax_cross_entropy)
    assert plain >= logits_bytes
    assert fused < plain - logits_bytes + logits_bytes // 8


# -- the planner -------------------------------------------------------------------------------


def test_stage1_spec_follows_the_repository_conventions():
    assert memory.stage1_spec("configs/uvim/depth.py:fsq,paper,stage2") == (
        "configs/uvim/depth.py:fsq,paper")
    assert memory.stage1_spec("configs/maskgit/transformer.py:vq,tiny") == (
        "configs/maskgit/tokenizer.py:vq,tiny")
    assert memory.stage1_spec("configs/uvim/depth.py:fsq,paper") is None


def test_overrides_and_remat_reach_the_config():
    config = memory.load_config("uvim/depth.py:fsq,tiny,stage2", ["stage2.dropout=0.25"],
                                remat="dots")
    assert config.stage2.dropout == 0.25 and config.stage2.remat == "dots"
    assert config.model.remat == "none"  # stage II trains `stage2`, not the frozen stage I
    assert memory.planned_remat(config) == "dots"
    with pytest.raises(ValueError, match="no field 'remats'"):
        memory.load_config("uvim/depth.py:fsq,tiny", ["model.remats=block"])


def test_stage2_state_carries_the_abstract_frozen_stage(tmp_path):
    """The frozen tokenizer rides along in the stage-II state (as in training) without being
    allocated: its bytes are the tokenizer generator's params plus its quantizer state."""
    config = memory.load_config("maskgit/transformer.py:fsq,tiny")
    frozen = memory.load_config("maskgit/tokenizer.py:fsq,tiny")
    mesh, rng = _mesh(), jax.random.key(0)
    images = memory.abstract_batch(memory.batch_spec(config, 4), mesh)
    _, initializer = memory.build_planned_task(config, frozen, rng, images, str(tmp_path))
    state, _ = abstract_state(initializer, rng, images, mesh, False)
    stage1 = jax.eval_shape(resolve_task(frozen)(frozen).init_state, rng, images)
    expected = sum(math.prod(x.shape) * x.dtype.itemsize
                   for x in jax.tree.leaves(stage1.params["generator"]))
    assert memory.shard_bytes(state.model_state) == expected  # FSQ has no quantizer state
    assert jax.tree.leaves(state.model_state)[0].sharding is not None


def test_fsdp_shards_params_and_optimiser_state(tmp_path):
    config = memory.load_config("uvim/depth.py:fsq,tiny")
    mesh, rng = _mesh(2), jax.random.key(0)
    images = memory.abstract_batch(memory.batch_spec(config, 4), mesh)
    _, initializer = memory.build_planned_task(config, None, rng, images, str(tmp_path))
    replicated, _ = abstract_state(initializer, rng, images, mesh, False)
    sharded, _ = abstract_state(initializer, rng, images, mesh, True)
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(replicated.params))
    assert memory.shard_bytes(replicated.params) == 4 * count  # float32, a copy per device
    # Leaves of >= 4096 elements are split in two; the small ones (biases, norms) are not.
    big = sum(math.prod(x.shape) for x in jax.tree.leaves(replicated.params)
              if math.prod(x.shape) >= sharding.FSDP_MIN_SIZE)
    assert memory.shard_bytes(sharded.params) == 4 * (count - big // 2)
    assert memory.shard_bytes(sharded.opt_state) < memory.shard_bytes(replicated.opt_state)


def test_plan_of_a_tiny_preset():
    config = memory.load_config("uvim/depth.py:fsq,tiny")
    result = memory.plan(config, 2, _mesh(2), top=5, name="depth tiny")
    assert (result.devices, result.per_device_batch, result.global_batch) == (2, 2, 4)
    assert result.per_device_peak_bytes == (result.argument_bytes + result.output_bytes
                                            - result.alias_bytes + result.temp_bytes)
    # The state is donated: XLA writes the new state over the old one.
    assert result.alias_bytes >= result.params_bytes + result.opt_state_bytes
    assert result.argument_bytes >= result.params_bytes + result.opt_state_bytes
    sizes = [b["bytes"] for b in result.largest_buffers]
    assert len(sizes) == 5 and sizes == sorted(sizes, reverse=True)
    # The largest temporaries are the per-pixel depth logits: [2 per device, 32, 32, 128 bins].
    logits_bytes = 2 * 32 * 32 * 128 * 4
    assert sizes[0] == logits_bytes
    assert any(b["shape"] == "f32[2,32,32,128]" for b in result.largest_buffers)
    assert all(b["op_name"].startswith("jit(train)") for b in result.largest_buffers)
    assert "peak" in memory.report(result)


@pytest.mark.slow
def test_remat_reduces_the_planned_temporaries():
    """At a batch where the transformer's activations matter (tiny presets are otherwise
    dominated by parameters and gradients), rematerialising each layer lowers XLA's arena."""
    mesh = _mesh(2)
    frozen = memory.load_config("maskgit/tokenizer.py:fsq,tiny")
    plans = {remat: memory.plan(memory.load_config("maskgit/transformer.py:fsq,tiny",
                                                   remat=remat), 128, mesh, frozen_config=frozen)
             for remat in ("none", "block")}
    assert plans["block"].remat == "block"
    assert plans["block"].temp_bytes < plans["none"].temp_bytes
    assert plans["block"].params_bytes == plans["none"].params_bytes


def test_command_line_writes_the_json(tmp_path):
    """The script sets its own device count (a fresh process) and writes the documented keys."""
    out = tmp_path / "plan.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/memory.py"), "--config",
         "configs/maskgit/transformer.py:fsq,tiny", "--devices", "2", "--per-device-batch", "2",
         "--top", "3", "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    plan = json.loads(out.read_text())
    for key in ("per_device_peak_bytes", "per_device_batch", "devices", "largest_buffers"):
        assert key in plan
    assert (plan["devices"], plan["per_device_batch"], plan["global_batch"]) == (2, 2, 4)
    assert len(plan["largest_buffers"]) == 3
    assert {"bytes", "shape", "op_name"} <= set(plan["largest_buffers"][0])
    assert "largest buffers" in run.stdout and "peak" in run.stdout


def test_command_line_refuses_a_bad_override():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/memory.py"), "--config",
         "configs/uvim/depth.py:fsq,tiny", "--devices", "1", "--set", "model.nope=1"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        timeout=300)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].endswith("config has no field 'nope'")


def test_config_files_default_to_no_remat():
    for spec in ("uvim/depth.py:fsq,tiny", "uvim/colorization.py:vq,tiny,stage2",
                 "uvim/panoptic.py:fsq,tiny", "maskgit/transformer.py:fsq,tiny"):
        config = config_lib.load(spec)
        assert memory.planned_remat(config) == "none", spec


# -- the tokenizer's per-ResBlock remat ---------------------------------------------------------


def _planned_by_the_script(tmp_path, spec: str, *args: str) -> dict:
    """The JSON plan of `benchmarks/memory.py` run as a command (its own XLA flags: the device
    count and XLA's memory-minimising scheduler)."""
    out = tmp_path / f"plan{len(list(tmp_path.iterdir()))}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/memory.py"), "--config", f"configs/{spec}",
         *args, "--json", str(out)], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(out.read_text())


def test_tokenizer_block_remat_reduces_the_planned_temporaries(tmp_path):
    """The tiny tokenizer at a batch where its activations matter: keeping only each ResBlock's
    input lowers XLA's temporaries, with the same parameters. (Planned by the script: under
    XLA:CPU's default concurrency-optimised scheduler, which the in-process tests get, the
    recomputation is scheduled beside the forward pass and saves nothing.)"""
    plans = {remat: _planned_by_the_script(
        tmp_path, "maskgit/tokenizer.py:fsq,tiny", "--devices", "2", "--per-device-batch", "32",
        "--remat", remat) for remat in ("none", "block")}
    assert plans["block"]["remat"] == "block"
    assert plans["block"]["temp_bytes"] < 0.95 * plans["none"]["temp_bytes"]
    assert plans["block"]["params_bytes"] == plans["none"]["params_bytes"]
