"""UViM on monocular depth (NYU Depth v2 / procedural scenes), stage I or II, FSQ or VQ.

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

# NYU Depth v2 in TFDS has 47,584 training frames.
_NYU_TRAIN = 47_584

# The paper's two training stages (the shared optimiser and schedule: fsq_jax/config_lib/uvim.py).
PAPER = {
    # evaluator_batches=0: the task metric reads all 654 validation frames once, as big_vision
    # evaluators/proj/uvim/nyu_depth.py.
    # big_vision configs/proj/uvim/vqvae_nyu_depth.py: res=512, batch 1024, 200 epochs,
    # adafactor (beta2_cap 0.95) lr 1e-3, wd 1e-5, cosine with 4k warmup, grad clip 1.0.
    "stage1": cu.paper_stage(learning_rate=1e-3, weight_decay=1e-5, grad_clip_norm=1.0,
                              total_steps=200 * _NYU_TRAIN // 1024, batch_size=1024,
                              eval_every=250, evaluator_batches=0),
    # big_vision configs/proj/uvim/train_nyu_depth_pretrained.py: batch 512, 50 epochs,
    # adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": cu.paper_stage(learning_rate=1e-3, weight_decay=1e-6,
                              total_steps=50 * _NYU_TRAIN // 512, batch_size=512,
                              eval_every=1_000, evaluator_batches=0),
}


# big_vision vqvae_nyu_depth.py / train_nyu_depth_pretrained.py: train on "train" with a random
# flip and inception_box|crop_box stretched to 512 (depth nearest); evaluate on "validation" (654
# frames) through nyu_eval_crop (426x560) stretched to 512, scoring the prediction resized back to
# the crop against its native ground truth (nyu_depth.py).
DATA = {"source": "tfds:nyu_depth_v2", "image_size": 512, "crop": "inception",
        "random_flip": True, "eval_crop": "nyu_eval_crop", "eval_native_shape": (426, 560),
        "train_skip": 0}
# UViM: depth quantised to 256 bins over [1e-3, 10] m (big_vision vqvae_nyu_depth.py).
OUTPUT = {"name": "depth", "bins": 256, "min_depth": 1e-3, "max_depth": 10.0}
# Scene depth runs from ~2.9 m to the backdrop at 14 m; 128 bins of 0.12 m.
TINY_OUTPUT = {"bins": 128, "max_depth": 15.0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Comma list of presets: a quantizer, tiny|paper, stage1|stage2, nosplit, nocontext,
    official (with vq,paper: big_vision's published checkpoints, docs/official_checkpoints.md)."""
    return cu.uvim_config(arg, paper_stages=PAPER, data=DATA, output=OUTPUT,
                          tiny_output=TINY_OUTPUT)
