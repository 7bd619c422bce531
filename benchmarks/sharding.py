"""Compile time and per-step time of the loop's train step: 8 fake CPU devices vs one device.

On a CPU the fake devices share the same cores, so this measures the overhead the sharded program
adds (collectives, partitioning), not scaling. Usage: `python benchmarks/sharding.py [--steps N]`.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import statistics
import time

import jax
from absl import flags

from fsq_jax import config_lib
from fsq_jax.tasks.autoencoder import AutoencoderTask
from fsq_jax.tasks.synthetic import smooth_images
from fsq_jax.train import cli, sharding
from fsq_jax.train.checkpoint import state_to_tree, tree_to_state
from fsq_jax.train.loop import CompiledSteps

_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per setup.")
_PRESET = flags.DEFINE_string("preset", "fsq,small", "Preset of configs/autoencoder.py.")


def measure(config, devices, fsdp, steps):
    """Returns (compile seconds, median step milliseconds) of the train step on `devices`."""
    mesh = sharding.create_mesh(devices)
    task = AutoencoderTask(config)
    batch = sharding.shard_batch(next(smooth_images(config.data, "train", config.batch_size)), mesh)
    rng = jax.random.PRNGKey(0)
    abstract = jax.eval_shape(task.init_state, rng, batch)
    shardings = sharding.state_shardings(abstract, mesh, fsdp)
    tree = jax.jit(
        lambda r, b: state_to_tree(task.init_state(r, b)), out_shardings=state_to_tree(shardings)
    )(rng, batch)
    state = tree_to_state(tree, abstract)
    compiled = CompiledSteps(task, shardings, mesh)
    started = time.perf_counter()
    executable = compiled.train.lower(state, batch, rng).compile()
    compile_seconds = time.perf_counter() - started
    for _ in range(3):  # warm-up
        state, metrics, _ = executable(state, batch, rng)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        state, metrics, _ = executable(state, batch, rng)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - started)
    return compile_seconds, 1000 * statistics.median(times)


def main(argv: list[str]) -> None:
    cli.start(argv)
    config = config_lib.load(f"autoencoder.py:{_PRESET.value}")
    devices = jax.devices()
    print(
        f"task: autoencoder {_PRESET.value}, global batch {config.batch_size}, "
        f"image {config.data.image_size}, {len(devices)} fake CPU devices, "
        f"{os.cpu_count()} cores"
    )
    rows = [
        ("1 device", devices[:1], False),
        (f"{len(devices)} devices, data parallel", devices, False),
        (f"{len(devices)} devices, FSDP", devices, True),
    ]
    results = [(name, *measure(config, d, fsdp, _STEPS.value)) for name, d, fsdp in rows]
    base_compile, base_step = results[0][1], results[0][2]
    print(f"{'setup':<28}{'compile s':>10}{'x':>7}{'step ms':>10}{'x':>7}")
    for name, compile_seconds, step_ms in results:
        print(
            f"{name:<28}{compile_seconds:>10.2f}{compile_seconds / base_compile:>7.2f}"
            f"{step_ms:>10.2f}{step_ms / base_step:>7.2f}"
        )


if __name__ == "__main__":
    cli.run(main)
