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

from fsq_jax.config_lib import uvim as cu

# COCO 2017 panoptic has 118,287 training images; UViM holds out the first 4096 (both stages
# train on "train[4096:]").
_COCO_TRAIN = 118_287
_STAGE1_TRAIN = _COCO_TRAIN - 4_096

# The paper's two training stages (the shared optimiser and schedule: fsq_jax/config_lib/uvim.py).
PAPER = {
    # evaluator_batches=0: PQ over all 5000 validation images once, as big_vision
    # evaluators/proj/uvim/coco_panoptic.py.
    # big_vision configs/proj/uvim/vqvae_coco_panoptic.py: res=512, batch 1024, 1000 epochs,
    # adafactor (beta2_cap 0.95) lr 4e-4, wd 4e-5, cosine with 4k warmup, grad clip 1.0.
    "stage1": cu.paper_stage(learning_rate=4e-4, weight_decay=4e-5, grad_clip_norm=1.0,
                              total_steps=1000 * _STAGE1_TRAIN // 1024, batch_size=1024,
                              eval_every=250, evaluator_batches=0),
    # big_vision configs/proj/uvim/train_coco_panoptic_pretrained.py: batch 512, 200 epochs of
    # train[4096:], adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": cu.paper_stage(learning_rate=1e-3, weight_decay=1e-6,
                              total_steps=200 * _STAGE1_TRAIN // 512, batch_size=512,
                              eval_every=1_000, evaluator_batches=0),
}


# big_vision vqvae_coco_panoptic.py / train_coco_panoptic_pretrained.py: train on "train[4096:]"
# with a random flip and inception_box|crop_box stretched to 512 (labels nearest); evaluate the
# whole image stretched to 512, scoring the prediction resized back to the original size (COCO
# images are at most 640x640) with panopticapi's rules (evaluators/proj/uvim/coco_panoptic.py).
DATA = {"source": "tfds:coco/2017_panoptic", "image_size": 512, "crop": "inception",
        "random_flip": True, "eval_crop": "resize", "eval_native_shape": (640, 640),
        "train_skip": 4_096}
# UViM on COCO panoptic: 133 classes (+ void), the 80 thing classes first, 100 instance channels,
# slot 0 void (big_vision vqvae_coco_panoptic.py inputs: semantics (133 + 1), instances (100)).
# The loop checks the classes against the data source.
OUTPUT = {"name": "panoptic", "num_classes": 133, "max_instances": 100,
          "thing_classes": tuple(range(80))}
TINY_DATA = {"train_skip": 0}
# The procedural scenes: 12 object classes (things), then sky and ground (stuff); at most 4
# objects per scene by default, so at most 6 segments (slots 1..6 of 0..7).
TINY_OUTPUT = {"num_classes": 14, "thing_classes": tuple(range(12)), "max_instances": 8}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Comma list of presets: a quantizer, tiny|paper, stage1|stage2, nosplit, nocontext,
    official (with vq,paper: big_vision's published checkpoints, docs/official_checkpoints.md)."""
    return cu.uvim_config(arg, paper_stages=PAPER, data=DATA, output=OUTPUT,
                          tiny_data=TINY_DATA, tiny_output=TINY_OUTPUT)
