"""The accelerator measurement in one process: MFU of every paper-size training step, side by side.

Times, each printed as it finishes (so a run cut short still reports): the MaskGIT transformer
step at the paper size on cached tokens under each kernel variant (attention xla / cudnn, dropout
threefry / rbg), the tokenizer step, and UViM stage I and stage II at the paper's per-device batch
(4 images, big_vision's 1024 on 256 cores). MFU = FLOPs per step x steps/s / the device's dense
bf16 peak, with the transformer's model FLOPs (as benchmarks/maskgit.py counts them) and, for the
other steps, XLA's count of the program as traced (benchmarks/timing.py says why). A step under
--profile_below is traced and summarised to its top device operations. A time budget skips what
would not finish.

    python benchmarks/gpu.py --out results.json            # on one GPU (H100 / H200)
    python benchmarks/gpu.py --tiny --budget_s 600         # the same code on the tiny presets
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
from absl import flags

from fsq_jax.train import cli

# This file lives beside packages named like the ones it measures: import those, not siblings.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

# Dense bf16 peak TFLOP/s by device kind (NVIDIA data sheets, SXM parts).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "cpu": 1.0}

_TINY = flags.DEFINE_bool("tiny", False, "The tiny presets (a CPU check of the script).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation).")
_BUDGET = flags.DEFINE_float("budget_s", 480.0, "Stop starting measurements after this long.")
_OUT = flags.DEFINE_string("out", "", "Write the report as JSON here too.")
_ONLY = flags.DEFINE_list("only", [], "Measure only these: transformer, tokenizer, uvim.")
_UVIM_PER_DEVICE = flags.DEFINE_integer("uvim_per_device_batch", 4,
                                        "UViM images per device (big_vision: 4).")
_TOKENIZER_PER_DEVICE = flags.DEFINE_integer("tokenizer_per_device_batch", 64,
                                             "Tokenizer images per device (paper: 64).")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "A transformer variant as model overrides, e.g. "
    "attention=cudnn,attention_dropout=0.0,dropout_rng=rbg (repeat the flag for several; "
    "default: XLA and cuDNN attention, each with threefry and rbg dropout).")
_PROFILE_BELOW = flags.DEFINE_float(
    "profile_below", 0.4, "Trace a step and list its top operations when its MFU is below "
    "this (0: never).")


def peak_flops() -> float:
    """Dense bf16 peak of all local devices, FLOP/s."""
    kind = jax.devices()[0].device_kind
    per_device = next((v for k, v in PEAK_TFLOPS.items() if k.lower() in kind.lower()), 989.0)
    return per_device * 1e12 * jax.device_count()


class Report:
    """Measurements by name, printed as they finish, written to --out after each."""

    def __init__(self):
        self.values: dict[str, Any] = {
            "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "backend": jax.default_backend(), "peak_tflops": peak_flops() / 1e12}
        self.started = time.monotonic()

    def over_budget(self, name: str) -> bool:
        if time.monotonic() - self.started < _BUDGET.value:
            return False
        self.add(name, {"skipped": f"time budget of {_BUDGET.value:.0f} s spent"})
        return True

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f} s] {text}", flush=True)

    def add(self, name: str, value: dict[str, Any]) -> None:
        """Records a measurement (its line printed, the JSON rewritten); adding it again
        with a "profile" prints only the profile's line."""
        first = name not in self.values
        self.values[name] = value
        if first:
            self.log(f"{name}: {json.dumps({k: v for k, v in value.items() if k != 'profile'})}")
        profile = value.get("profile")
        if profile and "top" in profile:
            top = "; ".join(f"{op['name'][:60]} {op['ms_per_step']:.1f} ms"
                            for op in profile["top"][:6])
            self.log(f"{name} profile: device busy {profile['busy_ms_per_step']:.1f} of "
                     f"{profile['wall_ms_per_step']:.1f} ms/step, "
                     f"{profile.get('kernels_per_step', 0):.0f} launches/step "
                     f"({profile.get('launch_api_ms_per_step', 0):.1f} ms); top: {top}")
        elif profile:
            self.log(f"{name} profile: {json.dumps(profile)}")
        if _OUT.value:
            with open(_OUT.value, "w") as f:
                json.dump(self.values, f, indent=2)


def _measure(report: Report, name: str, task: Any, batch: Any, batch_size: int,
             model_flops: float | None = None) -> None:
    """Times a task's train step. MFU counts `model_flops` per step where given (the model's
    own FLOPs, as benchmarks/maskgit.py), else XLA's count of the traced program."""
    from benchmarks import profile_ops, timing

    if report.over_budget(name):
        return
    try:
        step = timing.compile_train_step(task, batch)
        rate = 1.0 / timing.seconds_per_call(step.run, _STEPS.value, _WARMUP.value)
    except Exception as error:  # a kernel this backend lacks, out of memory: report, go on
        report.add(name, {"error": f"{type(error).__name__}: {str(error)[:300]}"})
        return
    value = {"batch": batch_size, "steps_per_s": rate, "examples_per_s": rate * batch_size,
             "compile_s": step.compile_seconds, "memory": step.memory}
    if step.flops:
        value.update(xla_flops_per_step=step.flops, mfu_xla_flops=step.flops * rate / peak_flops())
    if model_flops or step.flops:
        value["mfu"] = (model_flops or step.flops) * rate / peak_flops()
    if model_flops:
        value["model_flops_per_step"] = model_flops
    report.add(name, value)
    if value.get("mfu", 0.0) < _PROFILE_BELOW.value:  # where does the time go?
        try:
            value["profile"] = profile_ops.trace_top_ops(step.run)
        except Exception as error:  # a profiler this backend lacks: the timing stands
            value["profile"] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        report.add(name, value)


def _default_variants() -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = [{}, {"dropout_rng": "rbg"}]
    if jax.default_backend() == "gpu":  # cudnn has no attention-weight dropout
        variants += [{"attention": "cudnn", "attention_dropout": 0.0},
                     {"attention": "cudnn", "attention_dropout": 0.0, "dropout_rng": "rbg"}]
    return variants


def _parse_variant(text: str) -> dict[str, Any]:
    """Model overrides from "field=value,...": "attention=cudnn,attention_dropout=0.0" ->
    {"attention": "cudnn", "attention_dropout": 0.0} (numbers parsed, the rest strings)."""
    variant: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--variant: {item!r} is not model_field=value")
        variant[name] = _number_or_text(value)
    return variant


def _number_or_text(value: str) -> int | float | str:
    for parse in (int, float):
        try:
            return parse(value)
        except ValueError:
            pass
    return value


def _synthetic(shapes: dict[str, tuple[tuple[int, ...], Any, int]]) -> dict[str, jax.Array]:
    """A batch on the mesh: {key: (shape, dtype, max value)} of random integers."""
    import numpy as np

    from fsq_jax.train import sharding

    rng = np.random.default_rng(0)
    host = {k: rng.integers(0, high, shape).astype(dtype)
            for k, (shape, dtype, high) in shapes.items()}
    return sharding.shard_batch(host, sharding.create_mesh())


def measure_maskgit(report: Report, size: str) -> None:
    """The transformer step on cached tokens (every kernel variant) and the tokenizer step."""
    import numpy as np

    from benchmarks import timing
    from fsq_jax import config_lib
    from fsq_jax.train import frozen_from_variables
    from maskgit import tasks

    config1 = config_lib.load(f"maskgit/tokenizer.py:fsq,{size}")
    config2 = config_lib.load(f"maskgit/transformer.py:fsq,{size}")
    config1.model.dtype = "bfloat16"
    config1.loss.perceptual_network = "none"  # its pretrained weights are the user's to supply
    if config2.num_classes == 0:
        config2.num_classes = tasks.num_classes(config2)
    image = config1.data.image_size
    per_device = _TOKENIZER_PER_DEVICE.value if size == "paper" else 8
    images = per_device * jax.device_count()
    batch = _synthetic({"image": ((images, image, image, 3), np.uint8, 256),
                        "label": ((images,), np.int32, config2.num_classes)})
    tokenizer = tasks.TokenizerTask(config1)
    state = jax.jit(tokenizer.init_state)(jax.random.key(0), batch)
    frozen = frozen_from_variables(config1, "generator",
                                   {"params": state.eval_params()["generator"]})
    del state
    report.log("tokenizer initialised")
    if not _ONLY.value or "transformer" in _ONLY.value:
        variants = [_parse_variant(v) for v in _VARIANTS.value] or _default_variants()
        for overrides in variants:
            config = config2.copy_and_resolve_references()
            config.model.update(overrides)
            if overrides.get("attention") == "cudnn":
                config.model.dtype = "bfloat16"
            task = tasks.TransformerTask(config, frozen=frozen)
            tokens = _synthetic({
                "tokens": ((config.batch_size, task.seq_len), np.int32, task.codebook_size),
                "label": ((config.batch_size,), np.int32, task.num_classes)})
            label = ",".join(f"{k}={v}" for k, v in overrides.items()) or "xla,threefry"
            _measure(report, f"transformer[{label}]", task, tokens, config.batch_size,
                     timing.transformer_train_flops(task, config.batch_size))
    if not _ONLY.value or "tokenizer" in _ONLY.value:
        adversarial = config1.copy_and_resolve_references()
        adversarial.loss.discriminator_start = 0
        _measure(report, "tokenizer", tasks.TokenizerTask(adversarial), batch, images)


def measure_uvim(report: Report, size: str) -> None:
    """UViM depth stage I and stage II at the per-device batch of big_vision (4)."""
    from fsq_jax import config_lib, data
    from fsq_jax.train import frozen_from_variables, sharding
    from uvim.tasks import Stage1Task, Stage2Task

    config1 = config_lib.load(f"uvim/depth.py:fsq,{size}")
    config2 = config_lib.load(f"uvim/depth.py:fsq,{size},stage2")
    config2.stage2.encoder_lr_multiplier = 1.0  # no ViT-L/16 checkpoint here; same step cost
    for config in (config1, config2):
        config.data.source = "scenes"
    images = _UVIM_PER_DEVICE.value * jax.device_count()
    host = next(iter(data.build(config1.data, "train", images)))
    batch = sharding.shard_batch(host, sharding.create_mesh())
    stage1 = Stage1Task(config1)
    _measure(report, "uvim_depth_stage1", stage1, batch, images)
    if report.over_budget("uvim_depth_stage2"):
        return
    state = jax.jit(stage1.init_state)(jax.random.key(0), batch)
    frozen = frozen_from_variables(config1, "model", {"params": state.params["model"],
                                                      **state.model_state})
    del state
    _measure(report, "uvim_depth_stage2", Stage2Task(config2, frozen=frozen), batch, images)


def main(argv: list[str]) -> None:
    cli.start(argv)
    size = "tiny" if _TINY.value else "paper"
    report = Report()
    print(f"device: {report.values['device']} x {report.values['devices']}, peak "
          f"{report.values['peak_tflops']:.0f} TFLOP/s bf16", flush=True)
    if not _ONLY.value or {"transformer", "tokenizer"} & set(_ONLY.value):
        measure_maskgit(report, size)
    if not _ONLY.value or "uvim" in _ONLY.value:
        measure_uvim(report, size)
    print(json.dumps(report.values, indent=2))


if __name__ == "__main__":
    cli.run(main)
