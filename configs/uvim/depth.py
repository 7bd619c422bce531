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
    "data": {"source": "tfds:nyu_depth_v2", "image_size": 512},
    # big_vision configs/proj/uvim/vqvae_nyu_depth.py: res=512, batch 1024, 200 epochs,
    # adafactor (beta2_cap 0.95) lr 1e-3, wd 1e-5, cosine with 4k warmup, grad clip 1.0.
    "stage1": presets.paper_stage(learning_rate=1e-3, weight_decay=1e-5, grad_clip_norm=1.0,
                                  total_steps=200 * _NYU_TRAIN // 1024, batch_size=1024,
                                  eval_every=250),
    # big_vision configs/proj/uvim/train_nyu_depth_pretrained.py: batch 512, 50 epochs,
    # adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": presets.paper_stage(learning_rate=1e-3, weight_decay=1e-6,
                                  total_steps=50 * _NYU_TRAIN // 512, batch_size=512,
                                  eval_every=1_000),
}

# Scene depth runs from ~2.9 m to the backdrop at 14 m; 128 bins of 0.12 m.
TINY = presets.tiny_preset({"bins": 128, "max_depth": 15.0})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Comma list of presets: fsq|vq, tiny|paper, stage1|stage2, nosplit, nocontext."""
    return presets.build(depth.default_config(), arg, PAPER, TINY)
