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
    "data": {"source": "tfds:coco/2017_panoptic", "image_size": 512},
    # big_vision configs/proj/uvim/vqvae_coco_panoptic.py: res=512, batch 1024, 1000 epochs,
    # adafactor (beta2_cap 0.95) lr 4e-4, wd 4e-5, cosine with 4k warmup, grad clip 1.0.
    "stage1": presets.paper_stage(learning_rate=4e-4, weight_decay=4e-5, grad_clip_norm=1.0,
                                  total_steps=1000 * _STAGE1_TRAIN // 1024, batch_size=1024,
                                  eval_every=250),
    # big_vision configs/proj/uvim/train_coco_panoptic_pretrained.py: batch 512, 200 epochs,
    # adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": presets.paper_stage(learning_rate=1e-3, weight_decay=1e-6,
                                  total_steps=200 * _COCO_TRAIN // 512, batch_size=512,
                                  eval_every=1_000),
}

# Scenes hold at most 4 objects by default.
TINY = presets.tiny_preset({"max_instances": 8})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Comma list of presets: fsq|vq, tiny|paper, stage1|stage2, nosplit, nocontext."""
    config = presets.build(panoptic.default_config(), arg, PAPER, TINY)
    # Classes and which of them are things come from the data source (COCO: 133, 80 things).
    classes = data.panoptic_classes(config.data)
    config.dense_task.num_classes = len(classes.names)
    config.dense_task.thing_classes = tuple(i for i, t in enumerate(classes.is_thing) if t)
    return config
