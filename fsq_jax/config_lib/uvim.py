"""What the three UViM config files (configs/uvim/{depth,colorization,panoptic}.py) share.

Each file keeps what is its task's own (dataset sizes, the paper's two training stages, the
data pipeline, the output section and the tiny overrides) and calls `uvim_config`; the model,
stage-II, quantizer and preset handling below are the same for every UViM task in big_vision
(configs/proj/uvim/*.py, models/proj/uvim/*.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from fsq_jax.config_lib.arg import Choice, parse_arg
from fsq_jax.config_lib.quantizers import names, quantizer
from fsq_jax.config_lib.sections import loop, optimizer


def stage(*, optimizer: dict, total_steps: int, batch_size: int, eval_batch_size: int,
          eval_every: int, images_every: int, checkpoint_every: int, eval_steps: int,
          evaluator_batches: int) -> dict:
    """The loop fields, optimizer and evaluator size of one stage."""
    return {"optimizer": optimizer, "total_steps": total_steps, "batch_size": batch_size,
            "eval_batch_size": eval_batch_size, "log_every": 50, "eval_every": eval_every,
            "images_every": images_every, "checkpoint_every": checkpoint_every,
            "eval_steps": eval_steps, "evaluator_batches": evaluator_batches}


def paper_stage(*, learning_rate: float, weight_decay: float, total_steps: int,
                batch_size: int, eval_every: int, grad_clip_norm: float = 0.0,
                evaluator_batches: int = 3) -> dict:
    """One stage of a big_vision UViM config: its adafactor, cosine schedule with 4k warm-up.

    big_vision configs/proj/uvim/*.py: optax_name "big_vision.scale_by_adafactor" with
    optax=dict(beta2_cap=0.95), clipping_threshold None, the rest at scale_by_adafactor's
    defaults (big_vision/optax.py: min_dim_size_to_factor 32, decay_rate 0.8, momentum 0.9 in
    bfloat16); wd on kernels only (optax.py make: wd_mults default (".*/kernel$", 1.0)), scaled
    by the schedule, not by lr; schedule dict(decay_type="cosine", warmup_steps=4_000).
    """
    return stage(optimizer={"name": "big_vision_adafactor", "learning_rate": learning_rate,
                            "weight_decay": weight_decay, "weight_decay_pattern": ".*/kernel$",
                            "beta2_cap": 0.95, "beta2_exponent": 0.8,
                            "min_dim_size_to_factor": 32, "clipping_threshold": 0.0,
                            "momentum": 0.9, "momentum_dtype": "bfloat16",
                            "schedule": "cosine", "warmup_steps": 4_000,
                            "grad_clip_norm": grad_clip_norm},
                 total_steps=total_steps, batch_size=batch_size, eval_batch_size=256,
                 eval_every=eval_every, images_every=2_000, checkpoint_every=1_000,
                 eval_steps=8, evaluator_batches=evaluator_batches)


# Both stages of the tiny preset: 1,500 Adam steps on 32x32 scenes, minutes on a CPU.
TINY_STAGE = stage(optimizer={"name": "adam", "learning_rate": 1e-3, "schedule": "cosine",
                              "warmup_steps": 100, "grad_clip_norm": 1.0},
                   total_steps=1_500, batch_size=32, eval_batch_size=64, eval_every=500,
                   images_every=500, checkpoint_every=500, eval_steps=4, evaluator_batches=8)


def parse_uvim_arg(arg: str | None) -> ml_collections.ConfigDict:
    """The UViM preset language: a quantizer, tiny|paper, stage1|stage2, nosplit, nocontext,
    official (with vq,paper: big_vision's published checkpoints)."""
    arg = parse_arg(arg, quantizer=Choice("fsq", names()),
                    size=Choice("tiny", ("tiny", "paper")),
                    stage=Choice("stage1", ("stage1", "stage2")), nosplit=False,
                    nocontext=False, official=False)
    if arg.nosplit and arg.quantizer != "vq":
        raise ValueError(f"config arg: 'nosplit' is a VQ ablation; add 'vq' ({arg})")
    if arg.official and (arg.quantizer, arg.size) != ("vq", "paper"):
        raise ValueError(f"config arg: 'official' is big_vision's published VQ model; use "
                         f"'vq,paper,official' ({arg})")
    return arg


def uvim_config(arg: str | None, *, paper_stages: Mapping[str, dict], data: Mapping[str, Any],
                output: Mapping[str, Any], tiny_data: Mapping[str, Any] | None = None,
                tiny_output: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of one UViM task for the preset string `arg`.

    Args:
      arg: the comma list of presets (`parse_uvim_arg`).
      paper_stages: `{"stage1": paper_stage(...), "stage2": paper_stage(...)}` of the task.
      data: the paper's `data` fields; `tiny_data` what the tiny preset changes beyond the
        32x32 procedural scenes.
      output: the task's `output` section (paper); `tiny_output` the tiny preset's changes.
    """
    arg = parse_uvim_arg(arg)
    paper = arg.size == "paper"
    task = "Stage1Task" if arg.stage == "stage1" else "Stage2Task"
    config = loop(task=f"uvim.tasks:{task}")
    config.data.update(dict(data))
    config.output = ml_collections.ConfigDict(dict(output))
    # UViM's stage I (big_vision vqvae_*.py configs): ViT-B-sized oracle, 6 encoder and 12
    # decoder layers at width 768, 16x16 patches of 512x512 outputs, a 256-token code.
    config.model = ml_collections.ConfigDict({
        "input_size": 512, "patch_size": 16, "width": 768, "enc_depth": 6, "dec_depth": 12,
        "mlp_dim": 3072, "num_heads": 12, "dropout": 0.0, "code_len": 256,
        "with_context": not arg.nocontext, "code_dropout": "random",
        # What each ViT block keeps for the backward pass: none | dots | block (uvim/vit.py;
        # benchmarks/memory.py measures them).
        "remat": "none"})
    # UViM's stage II (big_vision train_*_pretrained.py): the "large" VTT, 24 + 24 layers at
    # width 1024. Its encoder starts from ViT-L/16 on ImageNet-21k (model_init = {"encoder":
    # "howto-i21k-L/16"}) and trains at lr_mults 0.1. The file is the user's to supply
    # (docs/weights.md): --config.stage2.encoder_init=<ViT-L/16 .npz>; without it the 0.1
    # multiplier is refused at start-up (set it to 1.0 to train the encoder from scratch).
    config.stage2 = ml_collections.ConfigDict({
        "input_size": 512, "patch_size": 16, "width": 1024, "enc_depth": 24, "dec_depth": 24,
        "mlp_dim": 4096, "num_heads": 16, "dropout": 0.0, "temperature": 0.0,
        # big_vision's VTT decoder attention has no biases (models/proj/uvim/vtt.py).
        "decoder_attention_bias": not paper,
        "encoder_lr_multiplier": 0.1, "encoder_init": "", "remat": "none"})
    # FSQ paper Table 2: FSQ [7,5,5,5,5] = 4375 codes against UViM's 4096-code VQ (paper);
    # tiny: [8,5,5,5] / 1024 codes, so the tiny runs can fill the codebook in minutes. UViM's
    # VQ (big_vision models/proj/uvim/vit.py): codewords of dim 768, EMA dictionary learning
    # with momentum 0.995, unit-norm codewords, no commitment loss, and splitting of the most
    # used codeword whenever one's discounted count drops below 0.1; the encoder output is
    # standardised (jax.nn.standardize) before the lookup. UViM's discounted count is
    # sum_t 0.995^t n_t (steady state n / 0.005); our usage is an EMA (steady state n), so the
    # same threshold is 0.1 * (1 - 0.995) = 5e-4, and UViM's initial count of 1 is a usage of
    # 5e-3 (an unused code splits after ~460 steps, as in UViM).
    config.quantizer = quantizer(
        arg.quantizer, log2_size=12 if paper else 10,
        vq={"dim": 768 if paper else 32, "beta": 0.0, "use_ema": True, "ema_decay": 0.995,
            "l2_normalize": True, "standardize": True, "split_codes": not arg.nosplit,
            "usage_decay": 0.995,
            "dead_code_threshold": 5e-4, "usage_init": 5e-3, "split_perturbation": 1e-3})
    config.stage1_workdir = ""  # stage II: the workdir of the trained stage-I model
    if not paper:
        config.data.update(source="scenes", image_size=32, **dict(tiny_data or {}))
        small = {"input_size": 32, "patch_size": 4, "width": 64, "enc_depth": 2, "dec_depth": 2,
                 "mlp_dim": 128, "num_heads": 2}
        config.model.update(code_len=16, **small)
        config.stage2.update(encoder_lr_multiplier=1.0, **small)
        config.output.update(dict(tiny_output or {}))
    stage_fields = dict(paper_stages[arg.stage] if paper else TINY_STAGE)
    config.optimizer = optimizer(**stage_fields.pop("optimizer"))
    # eval_batch_size batches the task's evaluator (task metric, usage) reads.
    config.evaluators = ml_collections.ConfigDict(
        {"num_batches": stage_fields.pop("evaluator_batches")})
    config.update(stage_fields)
    if arg.official:
        # The published stage I / II .npz (scripts/convert_official.py): the stage-II encoder
        # comes trained in the file, so nothing is loaded from a ViT and nothing is slowed.
        config.stage2.encoder_lr_multiplier = 1.0
    return config
