"""UViM on panoptic segmentation (COCO / procedural scenes), stage I or II, FSQ or VQ.

`get_config("fsq,tiny")` trains stage I on 32x32 scenes in minutes on a CPU; `"vq,paper"` is the
FSQ paper's Table 2 baseline. Add `stage2` for the language model, `nosplit` (VQ) or `nocontext`
for the ablations.
"""

from __future__ import annotations

import ml_collections

from fsq_jax import data
from uvim import presets
from uvim.tasks import panoptic

# COCO 2017 panoptic has 118,287 training images; UViM holds out the first 4096 for stage I.
_COCO_TRAIN = 118_287
_STAGE1_TRAIN = _COCO_TRAIN - 4_096

PAPER = {
    # big_vision configs/proj/uvim/vqvae_coco_panoptic.py: res=512, batch 1024, 1000 epochs,
    # adafactor (beta2_cap 0.95) lr 4e-4, wd 4e-5, cosine with 4k warmup, grad clip 1.0.
    "data": {"source": "tfds:coco/2017_panoptic", "image_size": 512},
    "stage1": {
        "optimizer": {"name": "adafactor", "learning_rate": 4e-4, "weight_decay": 4e-5,
                      "schedule": "cosine", "warmup_steps": 4_000, "grad_clip_norm": 1.0},
        "total_steps": 1000 * _STAGE1_TRAIN // 1024, "batch_size": 1024, "eval_batch_size": 256,
        "log_every": 50, "eval_every": 250, "images_every": 2_000, "checkpoint_every": 1_000,
        "eval_steps": 8, "evaluator_batches": 3,
    },
    # big_vision configs/proj/uvim/train_coco_panoptic_pretrained.py: batch 512, 200 epochs,
    # adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": {
        "optimizer": {"name": "adafactor", "learning_rate": 1e-3, "weight_decay": 1e-6,
                      "schedule": "cosine", "warmup_steps": 4_000},
        "total_steps": 200 * _COCO_TRAIN // 512, "batch_size": 512, "eval_batch_size": 256,
        "log_every": 50, "eval_every": 1_000, "images_every": 2_000, "checkpoint_every": 1_000,
        "eval_steps": 8, "evaluator_batches": 3,
    },
}

TINY = {
    "data": {"source": "scenes", "image_size": 32},
    "task": {"max_instances": 8},  # scenes hold at most 4 objects by default
    "stage1": {
        "optimizer": {"name": "adam", "learning_rate": 1e-3, "schedule": "cosine",
                      "warmup_steps": 100, "grad_clip_norm": 1.0},
        "total_steps": 1_500, "batch_size": 32, "eval_batch_size": 64,
        "log_every": 50, "eval_every": 500, "images_every": 500, "checkpoint_every": 500,
        "eval_steps": 4, "evaluator_batches": 8,
    },
    "stage2": {
        "optimizer": {"name": "adam", "learning_rate": 1e-3, "schedule": "cosine",
                      "warmup_steps": 100, "grad_clip_norm": 1.0},
        "total_steps": 1_500, "batch_size": 32, "eval_batch_size": 64,
        "log_every": 50, "eval_every": 500, "images_every": 500, "checkpoint_every": 500,
        "eval_steps": 4, "evaluator_batches": 8,
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Comma list of presets: fsq|vq, tiny|paper, stage1|stage2, nosplit, nocontext."""
    config = presets.build(panoptic.default_config(), arg, PAPER, TINY)
    # Classes and which of them are things come from the data source (COCO: 133, 80 things).
    classes = data.panoptic_classes(config.data)
    config.dense_task.num_classes = len(classes.names)
    config.dense_task.thing_classes = tuple(i for i, t in enumerate(classes.is_thing) if t)
    return config
