"""Training speed of UViM stage I and stage II: steps/s, images/s, compile time, XLA TFLOP/s.

Tiny preset on whatever is here (a laptop CPU):   python benchmarks/uvim.py --task depth
Paper preset (ViT-B/16 stage I, ViT-L/16 LM):      python benchmarks/uvim.py --task depth --paper
Batches are procedural scenes at the preset's resolution (the paper preset's TFDS source is
swapped for them), so no dataset is needed; stage II runs on a freshly initialised stage I.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
from absl import flags

from fsq_jax.train import cli

# This file is named like the package it measures: import the package, not this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))


_TASK = flags.DEFINE_enum("task", "depth", ["depth", "colorization", "panoptic"], "UViM task.")
_QUANTIZER = flags.DEFINE_string("quantizer", "fsq", "Quantizer preset (a registered name).")
_PAPER = flags.DEFINE_bool("paper", False, "The paper preset's models.")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch; 0: the preset's.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation).")
_SKIP = flags.DEFINE_list("skip", [], "Measurements to skip: stage1, stage2.")


def main(argv: list[str]) -> None:
    cli.start(argv)

    from benchmarks import timing
    from fsq_jax import config_lib, data
    from fsq_jax.train import frozen_from_variables, sharding
    from uvim.tasks import Stage1Task, Stage2Task

    preset = f"{_QUANTIZER.value},{'paper' if _PAPER.value else 'tiny'}"
    config1 = config_lib.load(f"uvim/{_TASK.value}.py:{preset}")
    config2 = config_lib.load(f"uvim/{_TASK.value}.py:{preset},stage2")
    for config in (config1, config2):
        config.data.source = "scenes"
    batch_size = _BATCH.value or config1.batch_size
    mesh = sharding.create_mesh()
    host = next(iter(data.build(config1.data, "train", batch_size)))
    batch = sharding.shard_batch(host, mesh)
    skip = set(_SKIP.value)
    report: dict[str, Any] = {"preset": f"{_TASK.value}:{preset}", "backend": jax.default_backend(),
                              "devices": jax.device_count(),
                              "device_kind": jax.devices()[0].device_kind,
                              "image_size": int(config1.data.image_size)}

    def measure(name: str, task: Any) -> None:
        rate, flops, compile_s = timing.train_rate(task, batch, _STEPS.value, _WARMUP.value)
        report[name] = {"batch": batch_size, "steps_per_s": rate,
                        "images_per_s": rate * batch_size, "compile_s": compile_s}
        if flops:
            report[name]["xla_tflops_per_s"] = flops * rate / 1e12
        timing.emit(report, name)

    task1 = Stage1Task(config1)
    if "stage1" not in skip:
        measure("stage1_train", task1)
    if "stage2" not in skip:
        state1 = jax.jit(task1.init_state)(jax.random.key(0), batch)
        variables = {"params": state1.params["model"], **state1.model_state}
        task2 = Stage2Task(config2, frozen=frozen_from_variables(config1, "model", variables))
        del state1
        measure("stage2_train", task2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    cli.run(main)
