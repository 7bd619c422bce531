"""`make demo`: FSQ against VQ in MaskGIT on the procedural scenes, end to end on a CPU.

Trains the tiny FSQ and VQ tokenizers and a tiny MaskGIT transformer on each, evaluates them
(sampling FID, precision, recall, reconstruction FID, codebook usage) and writes
`<workdir>/report.md` (headline numbers against their targets, the paper's MaskGIT table beside
ours, each stage's time, pictures) and `<workdir>/report.json` (`{"floor_fid", "fsq": {"psnr",
"reconstruction_fid", "sampling_fid", "precision", "recall", "usage", "std", ...}, "vq": ...}`).
Finished stages are reused on a re-run; `--restart` starts over; `--seeds 3` trains each
quantizer with three seeds and reports the mean and spread.

    python scripts/demo.py --workdir runs/demo [--restart] [--seeds N] [--tokenizer_steps N] ...
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
_SEEDS = flags.DEFINE_integer("seeds", 1, "Training seeds per quantizer (the report gives the "
                              "mean and spread over them; the data stay the same).")


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


def seed_dir(workdir: str, name: str, seed: int) -> str:
    """Where one quantizer's runs of one training seed go (seed 0 directly in `<name>/`)."""
    return os.path.join(workdir, name if seed == 0 else f"{name}_seed{seed}")


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax import config_lib, quantizers
    from fsq_jax.reporting import demo
    from maskgit import pipeline

    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    started = time.time()
    ensure_inception_weights()
    setup_seconds = time.time() - started

    runs_by_seed: dict[str, list] = {}
    sizes = {}
    for name in _QUANTIZERS.value:
        for seed in range(_SEEDS.value):
            run_dir = seed_dir(workdir, name, seed)
            tokenizer_config, transformer_config = pipeline.configs_for(name, "tiny")
            for config, stage, steps in ((tokenizer_config, "tokenizer", _TOKENIZER_STEPS.value),
                                         (transformer_config, "transformer",
                                          _TRANSFORMER_STEPS.value)):
                out_dir = os.path.join(run_dir, stage, "evaluation")
                overrides = demo_overrides(stage, steps, _EVAL_IMAGES.value, out_dir)
                for key, value in overrides.items():
                    config_lib.set_field(config, key, value)
                config.seed = int(config.seed) + seed  # initialisation, dropout, data order
            print(f"\n=== {name.upper()} seed {seed}: tokenizer, then transformer, in {run_dir}",
                  flush=True)
            run = pipeline.run_maskgit(tokenizer_config, transformer_config, run_dir,
                                       restart=_RESTART.value)
            sizes[name] = quantizers.codebook_size(tokenizer_config.quantizer)
            runs_by_seed.setdefault(name, []).append(demo.QuantizerRuns(
                tokenizer=demo.StageRun(run.tokenizer_dir,
                                        f"configs/maskgit/tokenizer.py:{name},tiny",
                                        run.tokenizer_results),
                transformer=demo.StageRun(run.transformer_dir,
                                          f"configs/maskgit/transformer.py:{name},tiny",
                                          run.transformer_results),
            ))

    started = time.time()
    baseline = real_images_baseline(transformer_config, workdir, _RESTART.value)
    floor_seconds = time.time() - started
    runs = {name: seeds[0] for name, seeds in runs_by_seed.items()}
    headline = demo.summary(runs_by_seed, baseline)
    pictures = demo.collect_pictures(runs, workdir)
    curve_pictures = demo.training_curves(runs, workdir)
    extra = {"Inception weights (conversion, once)": setup_seconds,
             "real-images floor": floor_seconds}
    report = demo.render(runs, pictures, extra, codebook_sizes=sizes, baseline=baseline,
                         curve_pictures=curve_pictures, headline=headline)
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(headline, f, indent=2)
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(report)
    print("\n" + report)
    print(f"report: {os.path.abspath(path)}")


if __name__ == "__main__":
    cli.run(main)
