"""`make demo`: FSQ against VQ in MaskGIT on the procedural scenes, end to end on a CPU.

Trains the tiny FSQ and VQ tokenizers and a tiny MaskGIT transformer on each, evaluates them
(sampling FID, precision, recall, reconstruction FID, codebook usage) and writes
`<workdir>/report.md` with the paper's MaskGIT table beside ours, plus pictures. Finished stages
are reused on a re-run; `--restart` starts over.

    python scripts/demo.py --workdir runs/demo [--restart] [--tokenizer_steps N] ...
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from fsq_jax.train import cli

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where runs, pictures and the report go.")
_RESTART = flags.DEFINE_bool("restart", False, "Retrain everything instead of reusing runs.")
_TOKENIZER_STEPS = flags.DEFINE_integer("tokenizer_steps", 1000, "Stage-I training steps.")
_TRANSFORMER_STEPS = flags.DEFINE_integer("transformer_steps", 1200, "Stage-II training steps.")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 256, "Images per FID / usage evaluation.")
_QUANTIZERS = flags.DEFINE_list("quantizers", ["fsq", "vq"], "Quantizers to compare.")


def demo_overrides(stage: str, steps: int, eval_images: int, out_dir: str) -> dict:
    """Dotted config overrides that size one stage of the demo to the CPU budget."""
    period = max(steps // 3, 1)
    overrides = {
        "total_steps": steps,
        "eval_every": steps,
        "images_every": period,
        "checkpoint_every": period,
        "log_every": max(steps // 15, 1),
        "evaluators.num_images": eval_images,
    }
    if stage == "tokenizer":
        overrides["evaluators.out_dir"] = out_dir
        # Reconstruct first, then sharpen adversarially, as the tiny preset does (1/3 of it).
        overrides["loss.discriminator_start"] = steps // 3
    else:
        overrides["optimizer.warmup_steps"] = min(200, steps // 5)
    return overrides


def ensure_inception_weights() -> None:
    """Converts the FID Inception weights into the cache once (needs the torch extra)."""
    from fsq_jax.eval import inception

    try:
        inception.load()
    except FileNotFoundError:
        print("converting the FID Inception weights (once) ...", flush=True)
        print(f"wrote {inception.convert()}", flush=True)


def real_images_baseline(config, workdir: str, restart: bool) -> dict[str, float]:
    """The real-images floor of the sampling metrics, computed once per image count."""
    from fsq_jax.train.evaluation import context_for
    from maskgit import evaluation

    path = os.path.join(workdir, "real_images_baseline.json")
    num_images = int(config.evaluators.num_images)
    if os.path.isfile(path) and not restart:
        with open(path) as f:
            stored = json.load(f)
        if stored.get("num_images") == num_images:
            return stored
    print(f"\n=== real images as samples ({num_images}): the floor of FID / precision / recall",
          flush=True)
    context = context_for(config)
    baseline = {"num_images": num_images, **evaluation.real_images_baseline(config, context)}
    with open(path, "w") as f:
        json.dump(baseline, f, indent=2)
    return baseline


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax import config_lib, quantizers
    from fsq_jax.reporting import demo
    from maskgit import pipeline

    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    ensure_inception_weights()

    # Training times survive a re-run that reuses the finished stages.
    timings_path = os.path.join(workdir, "timings.json")
    stored_timings = {}
    if os.path.isfile(timings_path) and not _RESTART.value:
        with open(timings_path) as f:
            stored_timings = json.load(f)
    runs, timings, sizes = {}, {}, {}
    for name in _QUANTIZERS.value:
        run_dir = os.path.join(workdir, name)
        tokenizer_config, transformer_config = pipeline.configs_for(name, "tiny")
        for config, stage, steps in ((tokenizer_config, "tokenizer", _TOKENIZER_STEPS.value),
                                     (transformer_config, "transformer",
                                      _TRANSFORMER_STEPS.value)):
            out_dir = os.path.join(run_dir, stage, "evaluation")
            for key, value in demo_overrides(stage, steps, _EVAL_IMAGES.value, out_dir).items():
                config_lib.set_field(config, key, value)
        label = f"{name} (both stages, with evaluation)"
        start = time.time()
        print(f"\n=== {name.upper()}: tokenizer, then transformer, in {run_dir}", flush=True)
        run = pipeline.run_maskgit(tokenizer_config, transformer_config, run_dir,
                                   restart=_RESTART.value)
        if run.reused and label in stored_timings:
            timings[label] = stored_timings[label]
        else:
            timings[label] = time.time() - start
        with open(timings_path, "w") as f:
            json.dump({**stored_timings, **timings}, f, indent=2)
        sizes[name] = quantizers.codebook_size(tokenizer_config.quantizer)
        runs[name] = demo.QuantizerRuns(
            tokenizer=demo.StageRun(run.tokenizer_dir,
                                    f"configs/maskgit/tokenizer.py:{name},tiny",
                                    run.tokenizer_results),
            transformer=demo.StageRun(run.transformer_dir,
                                      f"configs/maskgit/transformer.py:{name},tiny",
                                      run.transformer_results),
        )

    baseline = real_images_baseline(transformer_config, workdir, _RESTART.value)
    pictures = demo.collect_pictures(runs, workdir)
    curve_pictures = demo.training_curves(runs, workdir)
    report = demo.render(runs, pictures, timings, codebook_sizes=sizes, baseline=baseline,
                         curve_pictures=curve_pictures)
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(report)
    print("\n" + report)
    print(f"report: {os.path.abspath(path)}")


if __name__ == "__main__":
    cli.run(main)
