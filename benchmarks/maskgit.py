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

import argparse
import json
import os
import sys
from typing import Any

import jax
import numpy as np

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


def transformer_train_flops(task: Any, batch_size: int) -> float:
    """Model FLOPs of one stage-II step: 3x the transformer's forward (forward + backward) plus
    the frozen tokenizer's encoder forward is not counted (it is not trained)."""
    from maskgit import transformer

    per_token = transformer.flops_per_token(task.config.model, task.codebook_size, task.seq_len)
    return 3.0 * per_token * (task.seq_len + 1) * batch_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="paper preset, bf16 compute")
    parser.add_argument("--quantizer", default="fsq", choices=("fsq", "vq"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tokenizer_batch", type=int, default=0, help="0: the preset's")
    parser.add_argument("--transformer_batch", type=int, default=0, help="0: the preset's")
    parser.add_argument("--sample_batch", type=int, default=64)
    parser.add_argument("--peak_tflops", type=float, default=989.0,
                        help="accelerator peak bf16 TFLOP/s for MFU (H100 SXM dense: 989)")
    parser.add_argument("--tokens", choices=("cache", "images", "both"), default="cache",
                        help="stage-II input: cached tokens (no tokenizer in the step), images "
                             "tokenised on the fly by the frozen encoder, or both measured")
    parser.add_argument("--variants", default="",
                        help="extra stage-II measurements with model.* overrides, e.g. "
                             "'attention=xla;dropout_rng=rbg,attention=cudnn,attention_dropout=0.0'"
                             " (cudnn has no attention-weight dropout)")
    parser.add_argument("--skip", default="",
                        help="comma list of: tokenizer,tokenizer_warmup,transformer,sample")
    args = parser.parse_args(argv)

    from benchmarks import timing
    from fsq_jax import config_lib
    from fsq_jax.train import frozen_from_variables
    from maskgit import tasks

    preset = f"{args.quantizer},{'paper' if args.paper else 'tiny'}"
    config1 = config_lib.load(f"maskgit/tokenizer.py:{preset}")
    config2 = config_lib.load(f"maskgit/transformer.py:{preset}")
    if args.paper:
        config1.model.dtype = "bfloat16"
        config2.model.dtype = "bfloat16"
        config1.loss.perceptual_network = "none"  # pretrained weights are not available here
    if config2.num_classes == 0:
        config2.num_classes = tasks.num_classes(config2)
    batch1 = args.tokenizer_batch or config1.batch_size
    batch2 = args.transformer_batch or config2.batch_size
    size = config1.data.image_size
    skip = set(filter(None, args.skip.split(",")))
    devices = jax.device_count()
    report: dict[str, Any] = {"preset": preset, "backend": jax.default_backend(),
                              "devices": devices, "device_kind": jax.devices()[0].device_kind}
    peak = args.peak_tflops * 1e12 * devices

    stage1 = tasks.TokenizerTask(config1)
    batch = _batch(batch1, size, config2.num_classes)
    tokenizer_state = jax.jit(stage1.init_state)(jax.random.key(0), batch)
    if "tokenizer" not in skip:
        # Steady state (adversarial terms on) and the warm-up phase (no discriminator work).
        adversarial = config1.copy_and_resolve_references()
        adversarial.loss.discriminator_start = 0
        phases = {"tokenizer_train": tasks.TokenizerTask(adversarial)}
        if config1.loss.discriminator_start > 0 and "tokenizer_warmup" not in skip:
            phases["tokenizer_train_warmup"] = stage1
        for name, task in phases.items():
            rate, flops, compile_s = timing.train_rate(task, batch, args.steps, args.warmup)
            report[name] = {"batch": batch1, "steps_per_s": rate, "images_per_s": rate * batch1,
                            "compile_s": compile_s}
            if flops:
                report[name]["xla_flops_per_step"] = flops
                report[name]["mfu_xla_flops"] = flops * rate / peak
            timing.emit(report, name)

    generator = tokenizer_state.eval_params()["generator"]
    variables = {"params": generator, **{k: v for k, v in tokenizer_state.model_state.items()
                                         if k == "quantizer_state"}}
    frozen = frozen_from_variables(config1, "generator", variables)
    stage2 = tasks.TransformerTask(config2, frozen=frozen)
    if "transformer" not in skip:
        inputs = {"cache": ["cache"], "images": ["images"], "both": ["cache", "images"]}
        runs = [(f"transformer_train_{source}", source, {}) for source in inputs[args.tokens]]
        runs += [("transformer_train_cache_" + ",".join(f"{k}={v}" for k, v in overrides.items()),
                  "cache", overrides) for overrides in _parse_variants(args.variants)]
        for name, source, overrides in runs:
            config = config2.copy_and_resolve_references()
            config.model.update(overrides)
            task = tasks.TransformerTask(config, frozen=frozen)
            batch = (_token_batch(batch2, task.seq_len, task.codebook_size, task.num_classes)
                     if source == "cache" else _batch(batch2, size, task.num_classes))
            try:
                rate, flops, compile_s = timing.train_rate(task, batch, args.steps, args.warmup)
            except Exception as error:  # e.g. a kernel this backend lacks: report, go on
                report[name] = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
                timing.emit(report, name)
                continue
            model_flops = transformer_train_flops(task, batch2)
            report[name] = {"batch": batch2, "input": source, "model": dict(config.model),
                            "steps_per_s": rate, "tokens_per_s": rate * batch2 * task.seq_len,
                            "model_flops_per_step": model_flops,
                            "mfu": model_flops * rate / peak, "compile_s": compile_s}
            if flops:
                report[name]["xla_flops_per_step"] = flops
            timing.emit(report, name)

    if "sample" not in skip:
        state = jax.jit(stage2.init_state)(jax.random.key(0), _batch(8, size, 1))
        sample = stage2.sample_fn(state)
        labels = np.arange(args.sample_batch, dtype=np.int32) % stage2.num_classes
        seconds = timing.seconds_per_call(lambda: sample(labels, jax.random.key(0)),
                                          max(args.steps // 2, 2), args.warmup)
        report["sampling"] = {"batch": args.sample_batch,
                              "num_steps": int(config2.sampling.num_steps),
                              "guidance_scale": float(config2.sampling.guidance_scale),
                              "images_per_s": args.sample_batch / seconds}
        timing.emit(report, "sampling")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
