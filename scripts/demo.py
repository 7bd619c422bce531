"""`make demo`: FSQ against VQ in MaskGIT on the procedural scenes, end to end on a CPU.

Trains the tiny FSQ and VQ tokenizers and a tiny MaskGIT transformer on each, evaluates them
(sampling FID, precision, recall, reconstruction FID, codebook usage) and writes
`<workdir>/report.md` (headline numbers against their targets, the paper's MaskGIT table beside
ours, each stage's time, pictures) and `<workdir>/report.json` (`{"floor_fid", "fsq": {"psnr",
"reconstruction_fid", "sampling_fid", "precision", "recall", "usage", "std", ...}, "vq": ...}`).
Finished stages are reused on a re-run; `--restart` starts over; `--seeds 3` trains each
quantizer with three seeds and reports the mean and spread. The runs (one per quantizer and
seed) train `--jobs` at a time, each in a process of its own, while this process scores the
real-images floor (`fsq_jax.train.concurrent_runs`).

    python scripts/demo.py --workdir runs/demo [--restart] [--seeds N] [--jobs N] ...
"""

from __future__ import annotations

import json
import os
import sys
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
_JOBS = flags.DEFINE_integer("jobs", 0, "Runs trained at once, each in its own process (0: as "
                             "many as there are CPU cores, at most one per run; 1: one after "
                             "the other in this process).", lower_bound=0)
_RUN = flags.DEFINE_string("run", None, "Train only this run, `<quantizer>:<seed>`, and exit "
                           "(what each of the --jobs processes does).")


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


def stage_configs(name: str, seed: int):
    """The demo's (tokenizer, transformer) configs of quantizer `name` and training `seed`."""
    from fsq_jax import config_lib
    from maskgit import pipeline

    tokenizer_config, transformer_config = pipeline.configs_for(name, "tiny")
    run_dir = seed_dir(_WORKDIR.value, name, seed)
    for config, stage, steps in ((tokenizer_config, "tokenizer", _TOKENIZER_STEPS.value),
                                 (transformer_config, "transformer", _TRANSFORMER_STEPS.value)):
        out_dir = os.path.join(run_dir, stage, "evaluation")
        overrides = demo_overrides(stage, steps, _EVAL_IMAGES.value, out_dir)
        for key, value in overrides.items():
            config_lib.set_field(config, key, value)
        config.seed = int(config.seed) + seed  # initialisation, dropout, data order
    return tokenizer_config, transformer_config


def train_run(name: str, seed: int, restart: bool):
    """Trains (or reuses) both stages of one quantizer and seed: its `demo.QuantizerRuns`."""
    from fsq_jax.reporting import demo
    from maskgit import pipeline

    run_dir = seed_dir(_WORKDIR.value, name, seed)
    tokenizer_config, transformer_config = stage_configs(name, seed)
    print(f"\n=== {name.upper()} seed {seed}: tokenizer, then transformer, in {run_dir}",
          flush=True)
    run = pipeline.run_maskgit(tokenizer_config, transformer_config, run_dir, restart=restart)
    return demo.QuantizerRuns(
        tokenizer=demo.StageRun(run.tokenizer_dir, f"configs/maskgit/tokenizer.py:{name},tiny",
                                run.tokenizer_results),
        transformer=demo.StageRun(run.transformer_dir,
                                  f"configs/maskgit/transformer.py:{name},tiny",
                                  run.transformer_results),
    )


def run_jobs(runs: list[tuple[str, int]]) -> list:
    """One job per (quantizer, seed): this script with `--run`, passing the demo's settings on."""
    from fsq_jax.train import concurrent_runs

    common = [sys.executable, os.path.abspath(__file__), f"--workdir={_WORKDIR.value}",
              f"--tokenizer_steps={_TOKENIZER_STEPS.value}",
              f"--transformer_steps={_TRANSFORMER_STEPS.value}",
              f"--eval_images={_EVAL_IMAGES.value}", f"--restart={_RESTART.value}"]
    return [concurrent_runs.Job(os.path.basename(seed_dir("", name, seed)),
                                [*common, f"--run={name}:{seed}"]) for name, seed in runs]


def parse_run(value: str) -> tuple[str, int]:
    """`fsq:1` -> ("fsq", 1)."""
    name, _, seed = value.partition(":")
    if not name or not seed.isdigit():
        raise ValueError(f"--run={value!r}: expected <quantizer>:<seed>, e.g. fsq:0")
    return name, int(seed)


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax import quantizers, run_dir
    from fsq_jax.reporting import demo
    from fsq_jax.train import concurrent_runs

    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    if _RUN.value is not None:  # one of the --jobs processes
        try:
            name, seed = parse_run(_RUN.value)
        except ValueError as error:
            sys.exit(f"flag error: {error}")
        from maskgit import pipeline

        try:
            train_run(name, seed, restart=_RESTART.value)
        except pipeline.StagePreemptedError as stopped:
            sys.exit(f"stopped on request: {stopped}")
        return
    demo_started = started = time.time()
    ensure_inception_weights()
    setup_seconds = time.time() - started

    runs = [(name, seed) for name in _QUANTIZERS.value for seed in range(_SEEDS.value)]
    parallel = _JOBS.value or concurrent_runs.default_parallelism(len(runs))
    _, transformer_config = stage_configs(runs[0][0], 0)
    restart = _RESTART.value
    if parallel > 1:
        print(f"training {len(runs)} runs, {parallel} at a time (one process each; their lines "
              "start with the run's name), while this process scores the real-images floor",
              flush=True)
        with concurrent_runs.JobPool(run_jobs(runs), parallel) as pool:
            started = time.time()
            baseline = real_images_baseline(transformer_config, workdir, restart)
            floor_seconds = time.time() - started
            pool.wait()
        restart = False  # the jobs trained every run: collect their results below
    runs_by_seed: dict[str, list] = {}
    for name, seed in runs:
        runs_by_seed.setdefault(name, []).append(train_run(name, seed, restart))
    if parallel == 1:
        started = time.time()
        baseline = real_images_baseline(transformer_config, workdir, restart)
        floor_seconds = time.time() - started

    sizes = {name: quantizers.codebook_size(stage_configs(name, 0)[0].quantizer)
             for name in runs_by_seed}
    first_seed = {name: seeds[0] for name, seeds in runs_by_seed.items()}
    headline = demo.summary(runs_by_seed, baseline)
    pictures = demo.collect_pictures(first_seed, workdir)
    curve_pictures = demo.training_curves(first_seed, workdir)
    extra = {"Inception weights (conversion, once)": setup_seconds,
             "real-images floor": floor_seconds}
    headline["wall_seconds"] = round(time.time() - demo_started, 1)
    headline["parallel_runs"] = parallel
    headline["runs_trained"] = sum(  # by this invocation (the rest were reused)
        run_dir.results_written_since(run.transformer.workdir, demo_started)
        for seeds in runs_by_seed.values() for run in seeds)
    headline["runs"] = len(runs)
    report = demo.render(first_seed, pictures, extra, codebook_sizes=sizes, baseline=baseline,
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
