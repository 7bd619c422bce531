"""UViM on colorization (ImageNet / procedural scenes), stage I or II, FSQ or VQ.

`get_config("fsq,tiny")` trains stage I on 32x32 scenes in minutes on a CPU; `"vq,paper"` is the
FSQ paper's Table 2 baseline. Add `stage2` for the language model, `nosplit` (VQ) or `nocontext`
for the ablations.
"""

from __future__ import annotations

import ml_collections

from uvim import presets
from uvim.tasks import colorization

# ImageNet-2012 has 1,281,167 training images; UViM holds out the first 4096 for stage I.
_IMAGENET_TRAIN = 1_281_167
_STAGE1_TRAIN = _IMAGENET_TRAIN - 4_096

PAPER = {
    "data": {"source": "tfds:imagenet2012", "image_size": 512},
    # big_vision configs/proj/uvim/vqvae_imagenet2012_colorization.py: res=512, batch 1024,
    # 100 epochs, adafactor (beta2_cap 0.95) lr 4e-4, wd 4e-5, cosine with 4k warmup, clip 1.0.
    # 20 evaluator batches of 256: FID-5k.
    "stage1": presets.paper_stage(learning_rate=4e-4, weight_decay=4e-5, grad_clip_norm=1.0,
                                  total_steps=100 * _STAGE1_TRAIN // 1024, batch_size=1024,
                                  eval_every=250, evaluator_batches=20),
    # big_vision configs/proj/uvim/train_imagenet2012_colorization_pretrained.py: batch 512,
    # 50 epochs, adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": presets.paper_stage(learning_rate=1e-3, weight_decay=1e-6,
                                  total_steps=50 * _IMAGENET_TRAIN // 512, batch_size=512,
                                  eval_every=1_000, evaluator_batches=20),
}

# PSNR only: FID needs the converted InceptionV3 (make inception).
TINY = presets.tiny_preset({"fid": False})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Comma list of presets: fsq|vq, tiny|paper, stage1|stage2, nosplit, nocontext."""
    return presets.build(colorization.default_config(), arg, PAPER, TINY)
