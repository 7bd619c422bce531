"""UViM on panoptic segmentation (COCO / procedural scenes), stage I or II, FSQ or VQ.

`get_config("fsq,tiny")` trains stage I on 32x32 procedural scenes in minutes on a CPU;
`"vq,paper"` is the FSQ paper's Table 2 baseline (Sec. 4.2). Presets: a quantizer (`fsq` | `vq`
| any registered name), a size (`tiny` | `paper`), a stage (`stage1` | `stage2`, the language
model over a finished stage-I run's codes), and the ablations `nosplit` (VQ without codebook
splitting) and `nocontext` (stage I without the image context); `official` (with `vq,paper`)
describes big_vision's published UViM checkpoints (docs/official_checkpoints.md).
"""

from __future__ import annotations

import ml_collections

from fsq_jax import config_lib as cl

# COCO 2017 panoptic has 118,287 training images; UViM holds out the first 4096 (both stages
# train on "train[4096:]").
_COCO_TRAIN = 118_287
_STAGE1_TRAIN = _COCO_TRAIN - 4_096


def _stage(*, optimizer: dict, total_steps: int, batch_size: int, eval_batch_size: int,
           eval_every: int, images_every: int, checkpoint_every: int, eval_steps: int,
           evaluator_batches: int) -> dict:
    """The loop fields, optimizer and evaluator size of one stage."""
    return {"optimizer": optimizer, "total_steps": total_steps, "batch_size": batch_size,
            "eval_batch_size": eval_batch_size, "log_every": 50, "eval_every": eval_every,
            "images_every": images_every, "checkpoint_every": checkpoint_every,
            "eval_steps": eval_steps, "evaluator_batches": evaluator_batches}


def _paper_stage(*, learning_rate: float, weight_decay: float, total_steps: int,
                 batch_size: int, eval_every: int, grad_clip_norm: float = 0.0,
                 evaluator_batches: int = 3) -> dict:
    """One stage of a big_vision UViM config: its adafactor, cosine schedule with 4k warm-up.

    big_vision configs/proj/uvim/*.py: optax_name "big_vision.scale_by_adafactor" with
    optax=dict(beta2_cap=0.95), clipping_threshold None, the rest at scale_by_adafactor's
    defaults (big_vision/optax.py: min_dim_size_to_factor 32, decay_rate 0.8, momentum 0.9 in
    bfloat16); wd on kernels only (optax.py make: wd_mults default (".*/kernel$", 1.0)), scaled
    by the schedule, not by lr; schedule dict(decay_type="cosine", warmup_steps=4_000).
    """
    return _stage(optimizer={"name": "big_vision_adafactor", "learning_rate": learning_rate,
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
TINY_STAGE = _stage(optimizer={"name": "adam", "learning_rate": 1e-3, "schedule": "cosine",
                               "warmup_steps": 100, "grad_clip_norm": 1.0},
                    total_steps=1_500, batch_size=32, eval_batch_size=64, eval_every=500,
                    images_every=500, checkpoint_every=500, eval_steps=4, evaluator_batches=8)

PAPER = {
    # evaluator_batches=0: PQ over all 5000 validation images once, as big_vision
    # evaluators/proj/uvim/coco_panoptic.py.
    # big_vision configs/proj/uvim/vqvae_coco_panoptic.py: res=512, batch 1024, 1000 epochs,
    # adafactor (beta2_cap 0.95) lr 4e-4, wd 4e-5, cosine with 4k warmup, grad clip 1.0.
    "stage1": _paper_stage(learning_rate=4e-4, weight_decay=4e-5, grad_clip_norm=1.0,
                           total_steps=1000 * _STAGE1_TRAIN // 1024, batch_size=1024,
                           eval_every=250, evaluator_batches=0),
    # big_vision configs/proj/uvim/train_coco_panoptic_pretrained.py: batch 512, 200 epochs of
    # train[4096:], adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": _paper_stage(learning_rate=1e-3, weight_decay=1e-6,
                           total_steps=200 * _STAGE1_TRAIN // 512, batch_size=512,
                           eval_every=1_000, evaluator_batches=0),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Comma list of presets: a quantizer, tiny|paper, stage1|stage2, nosplit, nocontext,
    official (with vq,paper: big_vision's published checkpoints, docs/official_checkpoints.md)."""
    arg = cl.parse_arg(arg, quantizer=cl.Choice("fsq", cl.names()),
                       size=cl.Choice("tiny", ("tiny", "paper")),
                       stage=cl.Choice("stage1", ("stage1", "stage2")), nosplit=False,
                       nocontext=False, official=False)
    if arg.nosplit and arg.quantizer != "vq":
        raise ValueError(f"config arg: 'nosplit' is a VQ ablation; add 'vq' ({arg})")
    if arg.official and (arg.quantizer, arg.size) != ("vq", "paper"):
        raise ValueError(f"config arg: 'official' is big_vision's published VQ model; use "
                         f"'vq,paper,official' ({arg})")
    paper = arg.size == "paper"
    task = "Stage1Task" if arg.stage == "stage1" else "Stage2Task"
    config = cl.loop(task=f"uvim.tasks:{task}")
    # big_vision vqvae_coco_panoptic.py / train_coco_panoptic_pretrained.py: train on
    # "train[4096:]" with a random flip and inception_box|crop_box stretched to 512 (labels
    # nearest); evaluate the whole image stretched to 512, scoring the prediction resized back
    # to the original size (COCO images are at most 640x640) with panopticapi's rules
    # (evaluators/proj/uvim/coco_panoptic.py).
    config.data.update({"source": "tfds:coco/2017_panoptic", "image_size": 512,
                        "crop": "inception", "random_flip": True, "eval_crop": "resize",
                        "eval_native_shape": (640, 640), "train_skip": 4_096})
    # UViM on COCO panoptic: 133 classes (+ void), the 80 thing classes first, 100 instance
    # channels, slot 0 void (big_vision vqvae_coco_panoptic.py inputs: semantics (133 + 1),
    # instances (100)). The loop checks the classes against the data source.
    config.output = ml_collections.ConfigDict({
        "name": "panoptic", "num_classes": 133, "max_instances": 100,
        "thing_classes": tuple(range(80))})
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
    config.quantizer = cl.quantizer(
        arg.quantizer, log2_size=12 if paper else 10,
        vq={"dim": 768 if paper else 32, "beta": 0.0, "use_ema": True, "ema_decay": 0.995,
            "l2_normalize": True, "standardize": True, "split_codes": not arg.nosplit,
            "usage_decay": 0.995,
            "dead_code_threshold": 5e-4, "usage_init": 5e-3, "split_perturbation": 1e-3})
    config.stage1_workdir = ""  # stage II: the workdir of the trained stage-I model
    if not paper:
        config.data.update(source="scenes", image_size=32)
        small = {"input_size": 32, "patch_size": 4, "width": 64, "enc_depth": 2, "dec_depth": 2,
                 "mlp_dim": 128, "num_heads": 2}
        config.model.update(code_len=16, **small)
        config.stage2.update(encoder_lr_multiplier=1.0, **small)
        config.data.train_skip = 0
        # The procedural scenes: 12 object classes (things), then sky and ground (stuff); at
        # most 4 objects per scene by default, so at most 6 segments (slots 1..6 of 0..7).
        config.output.update(num_classes=14, thing_classes=tuple(range(12)), max_instances=8)
    stage = dict(PAPER[arg.stage] if paper else TINY_STAGE)
    config.optimizer = cl.optimizer(**stage.pop("optimizer"))
    # eval_batch_size batches the task's evaluator (task metric, usage) reads.
    config.evaluators = ml_collections.ConfigDict({"num_batches": stage.pop("evaluator_batches")})
    config.update(stage)
    if arg.official:
        # The published stage I / II .npz (scripts/convert_official.py): the stage-II encoder
        # comes trained in the file, so nothing is loaded from a ViT and nothing is slowed.
        config.stage2.encoder_lr_multiplier = 1.0
    return config
