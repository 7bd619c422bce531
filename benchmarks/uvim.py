"""Training speed of UViM stage I and stage II: steps/s, images/s, compile time, XLA TFLOP/s.

Tiny preset on whatever is here (a laptop CPU):   python benchmarks/uvim.py --task depth
Paper preset (ViT-B/16 stage I, ViT-L/16 LM):      python benchmarks/uvim.py --task depth --paper
Batches are procedural scenes at the preset's resolution (the paper preset's TFDS source is
swapped for them), so no dataset is needed; stage II runs on a freshly initialised stage I.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax

# This file is named like the package it measures: import the package, not this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="depth", choices=("depth", "colorization", "panoptic"))
    parser.add_argument("--quantizer", default="fsq", choices=("fsq", "vq"))
    parser.add_argument("--paper", action="store_true", help="the paper preset's models")
    parser.add_argument("--batch", type=int, default=0, help="global batch; 0: the preset's")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma list of: stage1,stage2")
    args = parser.parse_args(argv)

    from benchmarks import timing
    from fsq_jax import config_lib, data
    from fsq_jax.train import frozen_from_variables, sharding
    from uvim.tasks import Stage1Task, Stage2Task

    preset = f"{args.quantizer},{'paper' if args.paper else 'tiny'}"
    config1 = config_lib.load(f"uvim/{args.task}.py:{preset}")
    config2 = config_lib.load(f"uvim/{args.task}.py:{preset},stage2")
    for config in (config1, config2):
        config.data.source = "scenes"
    batch_size = args.batch or config1.batch_size
    mesh = sharding.create_mesh()
    host = next(iter(data.build(config1.data, "train", batch_size)))
    batch = sharding.shard_batch(host, mesh)
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {"preset": f"{args.task}:{preset}", "backend": jax.default_backend(),
                              "devices": jax.device_count(),
                              "device_kind": jax.devices()[0].device_kind,
                              "image_size": int(config1.data.image_size)}

    def measure(name: str, task: Any) -> None:
        rate, flops, compile_s = timing.train_rate(task, batch, args.steps, args.warmup)
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
    raise SystemExit(main())
