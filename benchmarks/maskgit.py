"""Speed of the MaskGIT pipeline: training steps/s of both stages and sampling images/s.

Tiny preset on whatever is here (a laptop CPU):   python benchmarks/maskgit.py
Paper preset with bf16 compute on a GPU / TPU:     python benchmarks/maskgit.py --paper
The paper mode also reports model FLOPs utilisation (MFU) of each training step against the
accelerator's peak bf16 rate (`--peak_tflops`, default: an H100 SXM's 989 dense TFLOP/s).
Batches are synthetic (random pixels and labels, or random codes standing for a token cache):
this measures the models, not the input. `--variants` times the stage-II step again under
`model.*` overrides (attention kernel, dropout generator) side by side in one run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import numpy as np
from absl import flags

from fsq_jax.train import cli

# This file is named like the package it measures: import the package, not this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))


def _batch(batch_size: int, image_size: int, num_classes: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    from fsq_jax.train import sharding

    mesh = sharding.create_mesh()
    host = {"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
            "label": rng.integers(0, num_classes, (batch_size,), np.int32)}
    return sharding.shard_batch(host, mesh)


def _token_batch(batch_size: int, seq_len: int, codebook_size: int, num_classes: int
                 ) -> dict[str, jax.Array]:
    """A stage-II batch as a token cache yields it: codes and labels, no pixels."""
    rng = np.random.default_rng(0)
    from fsq_jax.train import sharding

    host = {"tokens": rng.integers(0, codebook_size, (batch_size, seq_len), np.int32),
            "label": rng.integers(0, num_classes, (batch_size,), np.int32)}
    return sharding.shard_batch(host, sharding.create_mesh())


def _parse_variants(text: str) -> list[dict[str, str]]:
    """'attention=xla;attention=cudnn,attention_dropout=0.0' -> [{...}, {...}] (model.*
    overrides; values parsed as Python literals where they are ones)."""
    variants = []
    for chunk in filter(None, text.split(";")):
        pairs = [item.split("=", 1) for item in chunk.split(",")]
        if any(len(pair) != 2 for pair in pairs):
            raise SystemExit(f"--variants: {chunk!r} is not field=value[,field=value]")
        variants.append({field: _literal(value) for field, value in pairs})
    return variants


def _literal(text: str) -> Any:
    """A variant value: a Python literal (0.0, True) when it parses as one, else the string."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


_PAPER = flags.DEFINE_bool("paper", False, "Paper preset, bf16 compute.")
_QUANTIZER = flags.DEFINE_string("quantizer", "fsq", "Quantizer preset (a registered name).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation).")
_TOKENIZER_BATCH = flags.DEFINE_integer("tokenizer_batch", 0, "0: the preset's.")
_TRANSFORMER_BATCH = flags.DEFINE_integer("transformer_batch", 0, "0: the preset's.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 64, "Images per sampling call.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 989.0,
                                  "Accelerator peak bf16 TFLOP/s for MFU (H100 SXM dense: 989).")
_TOKENS = flags.DEFINE_enum(
    "tokens", "cache", ["cache", "images", "both"], "Stage-II input: cached tokens (no "
    "tokenizer in the step), images tokenised on the fly by the frozen encoder, or both.")
_VARIANTS = flags.DEFINE_string(
    "variants", "", "Extra stage-II measurements with model.* overrides, e.g. "
    "'dropout_rng=rbg;attention=cudnn,attention_dropout=0.0' (cudnn has no attention-weight "
    "dropout).")
_SKIP = flags.DEFINE_list("skip", [], "Measurements to skip: tokenizer, tokenizer_warmup, "
                          "transformer, sample.")


def _configs() -> tuple[Any, Any]:
    """The tokenizer and transformer configs of the chosen preset, set up for timing."""
    from fsq_jax import config_lib
    from maskgit import tasks

    preset = f"{_QUANTIZER.value},{'paper' if _PAPER.value else 'tiny'}"
    config1 = config_lib.load(f"maskgit/tokenizer.py:{preset}")
    config2 = config_lib.load(f"maskgit/transformer.py:{preset}")
    if _PAPER.value:
        config1.model.dtype = "bfloat16"
        config2.model.dtype = "bfloat16"
        config1.loss.perceptual_network = "none"  # pretrained weights are not available here
    if config2.num_classes == 0:
        config2.num_classes = tasks.num_classes(config2)
    return config1, config2


def _measure_tokenizer(report: dict[str, Any], config1: Any, stage1: Any, batch: Any,
                       peak: float) -> None:
    """Steady state (adversarial terms on) and the warm-up phase (no discriminator work)."""
    from benchmarks import timing
    from maskgit import tasks

    adversarial = config1.copy_and_resolve_references()
    adversarial.loss.discriminator_start = 0
    phases = {"tokenizer_train": tasks.TokenizerTask(adversarial)}
    if config1.loss.discriminator_start > 0 and "tokenizer_warmup" not in _SKIP.value:
        phases["tokenizer_train_warmup"] = stage1
    size = len(batch["image"])
    for name, task in phases.items():
        rate, flops, compile_s = timing.train_rate(task, batch, _STEPS.value, _WARMUP.value)
        report[name] = {"batch": size, "steps_per_s": rate, "images_per_s": rate * size,
                        "compile_s": compile_s}
        if flops:
            report[name]["xla_flops_per_step"] = flops
            report[name]["mfu_xla_flops"] = flops * rate / peak
        timing.emit(report, name)


def _measure_transformer(report: dict[str, Any], config2: Any, frozen: Any, batch_size: int,
                         image_size: int, peak: float) -> None:
    """The stage-II step on each input and each `--variants` override, side by side."""
    from benchmarks import timing
    from maskgit import tasks

    inputs = {"cache": ["cache"], "images": ["images"], "both": ["cache", "images"]}
    runs = [(f"transformer_train_{source}", source, {}) for source in inputs[_TOKENS.value]]
    runs += [("transformer_train_cache_" + ",".join(f"{k}={v}" for k, v in overrides.items()),
              "cache", overrides) for overrides in _parse_variants(_VARIANTS.value)]
    for name, source, overrides in runs:
        config = config2.copy_and_resolve_references()
        config.model.update(overrides)
        task = tasks.TransformerTask(config, frozen=frozen)
        batch = (_token_batch(batch_size, task.seq_len, task.codebook_size, task.num_classes)
                 if source == "cache" else _batch(batch_size, image_size, task.num_classes))
        try:
            rate, flops, compile_s = timing.train_rate(task, batch, _STEPS.value, _WARMUP.value)
        except Exception as error:  # e.g. a kernel this backend lacks: report, go on
            report[name] = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
            timing.emit(report, name)
            continue
        model_flops = timing.transformer_train_flops(task, batch_size)
        report[name] = {"batch": batch_size, "input": source, "model": dict(config.model),
                        "steps_per_s": rate, "tokens_per_s": rate * batch_size * task.seq_len,
                        "model_flops_per_step": model_flops,
                        "mfu": model_flops * rate / peak, "compile_s": compile_s}
        if flops:
            report[name]["xla_flops_per_step"] = flops
        timing.emit(report, name)


def _measure_sampling(report: dict[str, Any], stage2: Any, image_size: int) -> None:
    from benchmarks import timing

    state = jax.jit(stage2.init_state)(jax.random.key(0), _batch(8, image_size, 1))
    sample = stage2.sample_fn(state)
    labels = np.arange(_SAMPLE_BATCH.value, dtype=np.int32) % stage2.num_classes
    seconds = timing.seconds_per_call(lambda: sample(labels, jax.random.key(0)),
                                      max(_STEPS.value // 2, 2), _WARMUP.value)
    report["sampling"] = {"batch": _SAMPLE_BATCH.value,
                          "num_steps": int(stage2.config.sampling.num_steps),
                          "guidance_scale": float(stage2.config.sampling.guidance_scale),
                          "images_per_s": _SAMPLE_BATCH.value / seconds}
    timing.emit(report, "sampling")


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax.train import frozen_from_variables
    from maskgit import tasks

    config1, config2 = _configs()
    size = config1.data.image_size
    devices = jax.device_count()
    report: dict[str, Any] = {"preset": f"{_QUANTIZER.value},{'paper' if _PAPER.value else 'tiny'}",
                              "backend": jax.default_backend(), "devices": devices,
                              "device_kind": jax.devices()[0].device_kind}
    peak = _PEAK_TFLOPS.value * 1e12 * devices
    stage1 = tasks.TokenizerTask(config1)
    batch = _batch(_TOKENIZER_BATCH.value or config1.batch_size, size, config2.num_classes)
    tokenizer_state = jax.jit(stage1.init_state)(jax.random.key(0), batch)
    if "tokenizer" not in _SKIP.value:
        _measure_tokenizer(report, config1, stage1, batch, peak)
    variables = {"params": tokenizer_state.eval_params()["generator"],
                 **{k: v for k, v in tokenizer_state.model_state.items()
                    if k == "quantizer_state"}}
    frozen = frozen_from_variables(config1, "generator", variables)
    if "transformer" not in _SKIP.value:
        _measure_transformer(report, config2, frozen,
                             _TRANSFORMER_BATCH.value or config2.batch_size, size, peak)
    if "sample" not in _SKIP.value:
        _measure_sampling(report, tasks.TransformerTask(config2, frozen=frozen), size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run(main)
