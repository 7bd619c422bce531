"""UViM on monocular depth (NYU Depth v2 / procedural scenes), stage I or II, FSQ or VQ.

`get_config("fsq,tiny")` trains stage I on 32x32 scenes in minutes on a CPU; `"vq,paper"` is the
FSQ paper's Table 2 baseline. Add `stage2` for the language model, `nosplit` (VQ) or `nocontext`
for the ablations.
"""

from __future__ import annotations

import ml_collections

from uvim import presets
from uvim.tasks import depth

# NYU Depth v2 in TFDS has 47,584 training frames.
_NYU_TRAIN = 47_584

PAPER = {
    # big_vision configs/proj/uvim/vqvae_nyu_depth.py: res=512, batch 1024, 200 epochs,
    # adafactor (beta2_cap 0.95) lr 1e-3, wd 1e-5, cosine with 4k warmup, grad clip 1.0.
    "data": {"source": "tfds:nyu_depth_v2", "image_size": 512},
    "stage1": {
        "optimizer": {"name": "adafactor", "learning_rate": 1e-3, "weight_decay": 1e-5,
                      "schedule": "cosine", "warmup_steps": 4_000, "grad_clip_norm": 1.0},
        "total_steps": 200 * _NYU_TRAIN // 1024, "batch_size": 1024, "eval_batch_size": 256,
        "log_every": 50, "eval_every": 250, "images_every": 2_000, "checkpoint_every": 1_000,
        "eval_steps": 8, "evaluator_batches": 3,
    },
    # big_vision configs/proj/uvim/train_nyu_depth_pretrained.py: batch 512, 50 epochs,
    # adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": {
        "optimizer": {"name": "adafactor", "learning_rate": 1e-3, "weight_decay": 1e-6,
                      "schedule": "cosine", "warmup_steps": 4_000},
        "total_steps": 50 * _NYU_TRAIN // 512, "batch_size": 512, "eval_batch_size": 256,
        "log_every": 50, "eval_every": 1_000, "images_every": 2_000, "checkpoint_every": 1_000,
        "eval_steps": 8, "evaluator_batches": 3,
    },
}

TINY = {
    "data": {"source": "scenes", "image_size": 32},
    # Scene depth runs from ~2.9 m to the backdrop at 14 m; 128 bins of 0.12 m.
    "task": {"bins": 128, "max_depth": 15.0},
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
    return presets.build(depth.default_config(), arg, PAPER, TINY)
