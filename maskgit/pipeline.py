"""Train MaskGIT end to end: stage I (tokenizer), then stage II (transformer) on its tokens.

Shared by `make demo` and the codebook-size sweep. A stage whose workdir already holds a finished
run of the same config is reused instead of retrained, so re-running a command only does the work
that is missing; an interrupted stage resumes from its checkpoints. "The same config" is the
training loop's rule (`fsq_jax.train.resume`): equal up to the fields that may change on resume
(total_steps, periods, evaluator sizes, ...), so raising `total_steps` trains a stage on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ml_collections

from fsq_jax import config_lib

STAGES = ("tokenizer", "transformer")


class StagePreemptedError(RuntimeError):
    """Training stopped on request (SIGTERM / SIGINT) before `total_steps`; a checkpoint was
    saved, and running the same command again resumes from it."""

    def __init__(self, workdir: str, step: int):
        self.workdir, self.step = workdir, step
        super().__init__(f"{workdir}: stopped on request at step {step}; run again to resume")


@dataclass(frozen=True)
class MaskGITRun:
    """Both finished stages of one MaskGIT run: where they live and what they measured."""

    tokenizer_dir: str
    transformer_dir: str
    tokenizer_results: Mapping[str, Any]
    transformer_results: Mapping[str, Any]
    reused: bool = False  # both stages were already finished: nothing was trained


def finished_results(config: ml_collections.ConfigDict, workdir: str
                     ) -> dict[str, Any] | None:
    """The stored results of `workdir` if it holds a finished run of `config`, else None.

    Finished means `results.json` exists with `step >= config.total_steps` and `config.json`
    differs from `config` at most in the fields a run may change on resume (the training
    loop's own rule, `fsq_jax.train.resume.finished_results`).
    """
    from fsq_jax.train import resume

    return resume.finished_results(config, workdir)


def run_stage(config: ml_collections.ConfigDict, workdir: str, *, restart: bool = False
              ) -> dict[str, Any]:
    """Trains and evaluates one stage in `workdir`, or returns its results if already done.

    Args:
      config: a full experiment config (e.g. from configs/maskgit/tokenizer.py).
      workdir: the run's directory.
      restart: delete `workdir` first and train from scratch.

    Returns:
      The run's results (`step`, `train`, `eval`, `evaluators`, ...), as in `results.json`.

    Raises:
      ValueError: `workdir` holds a run of a different config (pass restart=True to replace
        it; resuming its checkpoints under another config would mix two experiments).
      StagePreemptedError: training was stopped by a signal (its checkpoint resumes next time).
    """
    if restart and os.path.isdir(workdir):
        shutil.rmtree(workdir)
    results = finished_results(config, workdir)
    if results is not None:
        print(f"reusing {workdir} (finished at step {results['step']})", flush=True)
        return results
    from fsq_jax import train
    from fsq_jax.train import resume

    try:
        resume.check_config(config, workdir)
    except resume.ConfigChangedError as changed:
        raise ValueError(
            f"workdir {workdir!r} holds a run of a different config ({changed.changed or changed})"
            "; restart it (restart=True / --restart) or choose another workdir") from None

    action = "resuming" if os.path.isdir(os.path.join(workdir, "checkpoints")) else "training"
    print(f"training {workdir} ({action}, {config.total_steps} steps, task {config.task})",
          flush=True)
    results = train.train_and_evaluate(config, workdir)
    if results.get("preempted"):
        raise StagePreemptedError(workdir, int(results.get("step", 0)))
    return results


def run_maskgit(tokenizer_config: ml_collections.ConfigDict,
                transformer_config: ml_collections.ConfigDict, workdir: str, *,
                restart: bool = False) -> MaskGITRun:
    """Stage I in `workdir/tokenizer`, then stage II on its tokens in `workdir/transformer`.

    `transformer_config.tokenizer_workdir` is set (on a copy) to the stage-I directory. When
    stage I is (re)trained here, stage II is retrained too: its tokens changed.
    """
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    transformer_dir = os.path.join(workdir, "transformer")
    stage1_done = not restart and finished_results(tokenizer_config, tokenizer_dir) is not None
    tokenizer_results = run_stage(tokenizer_config, tokenizer_dir, restart=restart)
    transformer_config = ml_collections.ConfigDict(transformer_config.to_dict())
    transformer_config.tokenizer_workdir = tokenizer_dir
    reused = stage1_done and finished_results(transformer_config, transformer_dir) is not None
    transformer_results = run_stage(transformer_config, transformer_dir,
                                    restart=restart or not stage1_done)
    return MaskGITRun(tokenizer_dir, transformer_dir, tokenizer_results, transformer_results,
                      reused=reused)


def apply_overrides(tokenizer_config: ml_collections.ConfigDict,
                    transformer_config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> None:
    """Applies dotted overrides in place.

    Keys prefixed `tokenizer.` / `transformer.` apply to that stage only; other keys apply to
    every stage that has the field (and must exist in at least one). The prefixed keys win.
    """
    configs = {"tokenizer": tokenizer_config, "transformer": transformer_config}
    shared = {k: v for k, v in overrides.items() if k.split(".", 1)[0] not in STAGES}
    staged = {k: v for k, v in overrides.items() if k.split(".", 1)[0] in STAGES}
    for key, value in shared.items():
        targets = [name for name, config in configs.items()
                   if config_lib.has_field(config, key)]
        if not targets:
            raise ValueError(f"override {key!r}: neither the tokenizer nor the transformer "
                             "config has this field")
        for name in targets:
            config_lib.set_field(configs[name], key, value, f"the {name} config")
    for key, value in staged.items():
        stage, field = key.split(".", 1)
        config_lib.set_field(configs[stage], field, value, f"the {stage} config")


def configs_for(quantizer_name: str, size: str = "tiny",
                overrides: Mapping[str, Any] | None = None
                ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(tokenizer config, transformer config) of the presets `<quantizer_name>,<size>` of the
    config files maskgit/{tokenizer,transformer}.py, with `overrides` applied (see
    `apply_overrides`), e.g. `{"total_steps": 500, "quantizer.fsq.levels": (8, 5, 5, 5),
    "transformer.model.num_layers": 2}`."""
    arg = f"{quantizer_name},{size}"
    tokenizer_config = config_lib.load(f"maskgit/tokenizer.py:{arg}")
    transformer_config = config_lib.load(f"maskgit/transformer.py:{arg}")
    apply_overrides(tokenizer_config, transformer_config, overrides or {})
    return tokenizer_config, transformer_config


