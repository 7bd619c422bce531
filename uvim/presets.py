"""Config presets shared by configs/uvim/{depth,colorization,panoptic}.py.

`build(task, arg, paper)` parses the comma list (`"fsq,tiny"`, `"vq,paper,stage2"`,
`"vq,paper,nosplit"`, `"fsq,tiny,nocontext"`) and returns the full ConfigDict; the per-task
files hold the task's paper numbers, each with the big_vision config it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from fsq_jax import quantizers
from fsq_jax.train import default_config as loop_default_config
from fsq_jax.train import optim
from uvim import stage1, stage2

QUANTIZERS = ("fsq", "vq")
SIZES = ("tiny", "paper")
STAGES = ("stage1", "stage2")
ABLATIONS = ("nosplit", "nocontext")
TASK_CLASSES = {"stage1": "uvim.tasks:Stage1Task", "stage2": "uvim.tasks:Stage2Task"}

# The FSQ paper, Sec. 4.2 / Table 2: FSQ levels replacing UViM's 4096-code VQ.
PAPER_FSQ_LEVELS = (7, 5, 5, 5, 5)


def paper_stage(*, learning_rate: float, weight_decay: float, total_steps: int,
                batch_size: int, eval_every: int, grad_clip_norm: float | None = None,
                evaluator_batches: int = 3) -> dict[str, Any]:
    """One stage of a big_vision UViM config: adafactor, cosine schedule with 4k warmup."""
    # big_vision configs/proj/uvim/*.py: optax_name "big_vision.scale_by_adafactor" with
    # optax=dict(beta2_cap=0.95), clipping_threshold None, the rest at scale_by_adafactor's
    # defaults (big_vision/optax.py: min_dim_size_to_factor 32, decay_rate 0.8, momentum 0.9 in
    # bfloat16); wd on kernels only (optax.py make: wd_mults default (".*/kernel$", 1.0)),
    # scaled by the schedule, not by lr; schedule dict(decay_type="cosine", warmup_steps=4_000).
    optimizer = {"name": "big_vision_adafactor", "learning_rate": learning_rate,
                 "weight_decay": weight_decay, "weight_decay_pattern": ".*/kernel$",
                 "beta2_cap": 0.95, "beta2_exponent": 0.8, "min_dim_size_to_factor": 32,
                 "clipping_threshold": 0.0, "momentum": 0.9, "momentum_dtype": "bfloat16",
                 "schedule": "cosine", "warmup_steps": 4_000}
    if grad_clip_norm is not None:
        optimizer["grad_clip_norm"] = grad_clip_norm
    return {"optimizer": optimizer, "total_steps": total_steps, "batch_size": batch_size,
            "eval_batch_size": 256, "log_every": 50, "eval_every": eval_every,
            "images_every": 2_000, "checkpoint_every": 1_000, "eval_steps": 8,
            "evaluator_batches": evaluator_batches}


# Both stages of every tiny preset: 1,500 Adam steps on 32x32 scenes, minutes on a CPU.
TINY_STAGE: dict[str, Any] = {
    "optimizer": {"name": "adam", "learning_rate": 1e-3, "schedule": "cosine",
                  "warmup_steps": 100, "grad_clip_norm": 1.0},
    "total_steps": 1_500, "batch_size": 32, "eval_batch_size": 64,
    "log_every": 50, "eval_every": 500, "images_every": 500, "checkpoint_every": 500,
    "eval_steps": 4, "evaluator_batches": 8,
}


def tiny_preset(task: Mapping[str, Any]) -> dict[str, Any]:
    """The tiny preset of a task: 32x32 procedural scenes, `TINY_STAGE`, these task overrides."""
    return {"data": {"source": "scenes", "image_size": 32}, "task": dict(task),
            "stage1": TINY_STAGE, "stage2": TINY_STAGE}


def parse_arg(arg: str | None) -> dict[str, Any]:
    """`"vq,paper,stage2,nosplit"` -> {"quantizer", "size", "stage", "ablations"}."""
    tokens = [t.strip() for t in (arg or "fsq,tiny").split(",") if t.strip()]
    known = (*QUANTIZERS, *SIZES, *STAGES, *ABLATIONS)
    unknown = [t for t in tokens if t not in known]
    if unknown:
        raise ValueError(f"get_config arg {arg!r}: unknown preset(s) {unknown}; "
                         f"choose from {list(known)}")
    parsed: dict[str, Any] = {"quantizer": "fsq", "size": "tiny", "stage": "stage1",
                              "ablations": set()}
    for group, names in (("quantizer", QUANTIZERS), ("size", SIZES), ("stage", STAGES)):
        chosen = [t for t in tokens if t in names]
        if len(chosen) > 1:
            raise ValueError(f"get_config arg {arg!r}: choose one {group} of {names}, "
                             f"got {chosen}")
        if chosen:
            parsed[group] = chosen[0]
    parsed["ablations"] = {t for t in tokens if t in ABLATIONS}
    if "nosplit" in parsed["ablations"] and parsed["quantizer"] != "vq":
        raise ValueError(f"get_config arg {arg!r}: 'nosplit' is a VQ ablation; add 'vq'")
    return parsed


def _quantizer(name: str, size: str, ablations: set[str]) -> ml_collections.ConfigDict:
    config = quantizers.default_config(name)
    if name == "fsq":
        # Paper: [7,5,5,5,5] = 4375 codes. Tiny: [8,5,5,5] = 1000 codes (Table 1's 2^10 row),
        # so that the tiny runs can fill the codebook in a few hundred steps.
        config.levels = PAPER_FSQ_LEVELS if size == "paper" else (8, 5, 5, 5)
        return config
    # UViM's VQ (big_vision models/proj/uvim/vit.py, configs vqvae_*.py): 4096 codewords of dim
    # 768 (codeword_dim), EMA dictionary learning with momentum 0.995 (dict_momentum), unit-norm
    # codewords, no commitment loss (w_commitment = 0), and splitting of the most used codeword
    # whenever one's discounted count drops below min_count = 0.1. UViM's discounted count is
    # sum_t 0.995^t n_t (steady state n / 0.005); our usage is an EMA (steady state n), so the
    # same threshold is 0.1 * (1 - 0.995) = 5e-4, and UViM's initial count of 1 is a usage of
    # 1 - 0.995 = 5e-3 (so an unused code splits after ~460 steps, as in UViM, not ~1500).
    config.update(codebook_size=4096 if size == "paper" else 1024,
                  dim=768 if size == "paper" else 32,
                  beta=0.0, use_ema=True, ema_decay=0.995, l2_normalize=True,
                  split_codes="nosplit" not in ablations, usage_decay=0.995,
                  dead_code_threshold=5e-4, usage_init=5e-3, split_perturbation=1e-3)
    return config


def build(task: ml_collections.ConfigDict, arg: str | None, paper: Mapping[str, Any],
          tiny: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The full config of one UViM experiment.

    Args:
      task: the dense task section (`uvim.tasks.<task>.default_config()`, paper values).
      arg: comma list of presets (see module docstring).
      paper: the paper preset's numbers: `data` (source, image_size), `stage1`/`stage2`
        (optimizer, total_steps, batch_size), `task` overrides.
      tiny: the tiny preset's overrides in the same layout.
    """
    parsed = parse_arg(arg)
    size, stage = parsed["size"], parsed["stage"]
    preset = paper if size == "paper" else tiny
    config = loop_default_config()
    config.task = TASK_CLASSES[stage]
    config.dense_task = task
    config.dense_task.update(dict(preset.get("task", {})))

    config.model = stage1.default_config()
    config.stage2 = stage2.default_config()
    # big_vision train_*_pretrained.py: the encoder starts from ViT-L/16 on ImageNet-21k
    # (model_init = {"encoder": "howto-i21k-L/16"}) and trains at lr_mults 0.1. The file is the
    # user's to supply (docs/weights.md): --config.stage2.encoder_init=<ViT-L/16 .npz>. Empty =
    # not loaded; then the 0.1 multiplier is refused at start-up (set it to 1.0 to train the
    # encoder from scratch at the full rate).
    config.stage2.encoder_lr_multiplier = 0.1
    config.stage2.encoder_init = ""
    if size == "tiny":
        config.model.update(input_size=32, patch_size=4, width=64, enc_depth=2, dec_depth=2,
                            mlp_dim=128, num_heads=2, code_len=16)
        config.stage2.update(input_size=32, patch_size=4, width=64, enc_depth=2, dec_depth=2,
                             mlp_dim=128, num_heads=2, encoder_lr_multiplier=1.0)
    if "nocontext" in parsed["ablations"]:
        config.model.with_context = False
    config.quantizer = _quantizer(parsed["quantizer"], size, parsed["ablations"])
    config.stage1_workdir = ""  # stage II: the workdir of the trained stage-I model

    config.data.update(dict(preset["data"]))
    section = preset[stage]
    config.optimizer = optim.default_config()
    config.optimizer.update(dict(section["optimizer"]))
    for field in ("total_steps", "batch_size", "eval_batch_size", "log_every", "eval_every",
                  "images_every", "checkpoint_every", "eval_steps"):
        if field in section:
            config[field] = section[field]
    config.evaluators = ml_collections.ConfigDict({
        # eval_batch_size batches the task's evaluator (RMSE / PQ / FID, usage) reads.
        "num_batches": section.get("evaluator_batches", 8),
    })
    return config
