"""Procedural scene throughput on one CPU core, against the 2,000 images/s target at 64x64.

Renders scenes one by one in this thread (BLAS pinned to one thread) and reports images per second
of CPU time (what one core delivers, robust to other processes sharing the machine) and of wall
time, best of several repeats; then the same through `fsq_jax.data.build` batches.

    .venv/bin/python benchmarks/scenes.py [--sizes 32,64,128,256] [--count 400]
"""

from __future__ import annotations

import itertools
import os
import time

# One core: keep BLAS (the background matmul) single-threaded. Set before numpy is imported.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

from absl import flags  # noqa: E402

from fsq_jax import data  # noqa: E402
from fsq_jax.data import scenes  # noqa: E402
from fsq_jax.train import cli  # noqa: E402

TARGET = 2000.0  # images/s at 64x64 on one core
_SIZES = flags.DEFINE_list("sizes", ["32", "64", "128", "256"], "Scene resolutions.")
_COUNT = flags.DEFINE_integer("count", 400, "Scenes per repeat at 64x64.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats; the best is kept.")


def _rate(fn, count: int, repeats: int) -> tuple[float, float]:
    """Best (CPU-time, wall-time) items per second of `count` calls of fn(i) over `repeats`."""
    best_cpu = best_wall = 0.0
    for repeat in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(count):
            fn(repeat * count + i)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        best_cpu, best_wall = max(best_cpu, count / cpu), max(best_wall, count / wall)
    return best_cpu, best_wall


def main(argv: list[str]) -> None:
    cli.start(argv)
    print(f"{'size':>6} {'img/s (cpu)':>12} {'img/s (wall)':>13} {'vs target':>10}")
    for size in map(int, _SIZES.value):
        count = max(20, _COUNT.value * 64 * 64 // (size * size))
        scenes.render_scene(0, "train", 0, size)  # builds the per-resolution grids
        cpu, wall = _rate(lambda i, s=size: scenes.render_scene(0, "train", i, s), count,
                          _REPEATS.value)
        ratio = f"{cpu / TARGET:9.2f}x" if size == 64 else ""
        print(f"{size:>6} {cpu:12.0f} {wall:13.0f} {ratio:>10}")
    config = data.default_config()
    config.read_threads = 0
    batch = 64
    batches = data.build(config, "train", batch)
    next(batches)
    steps = max(2, _COUNT.value // batch)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in itertools.islice(batches, steps):
        pass
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"build(): 64x64 batches of {batch}: {steps * batch / cpu:.0f} img/s (cpu), "
          f"{steps * batch / wall:.0f} img/s (wall)")


if __name__ == "__main__":
    cli.run(main)
