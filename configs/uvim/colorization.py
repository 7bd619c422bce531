"""UViM on colorization (ImageNet / procedural scenes), stage I or II, FSQ or VQ.

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

# ImageNet-2012 has 1,281,167 training images; UViM holds out the first 4096 (both stages
# train on "train[4096:]").
_IMAGENET_TRAIN = 1_281_167
_STAGE1_TRAIN = _IMAGENET_TRAIN - 4_096

# The paper's two training stages (the shared optimiser and schedule: fsq_jax/config_lib/uvim.py).
PAPER = {
    # big_vision configs/proj/uvim/vqvae_imagenet2012_colorization.py: res=512, batch 1024,
    # 100 epochs, adafactor (beta2_cap 0.95) lr 4e-4, wd 4e-5, cosine with 4k warmup, clip 1.0.
    # PSNR on 20 validation batches of 256; FID-5k is its own evaluator (output.fid).
    "stage1": cu.paper_stage(learning_rate=4e-4, weight_decay=4e-5, grad_clip_norm=1.0,
                              total_steps=100 * _STAGE1_TRAIN // 1024, batch_size=1024,
                              eval_every=250, evaluator_batches=20),
    # big_vision configs/proj/uvim/train_imagenet2012_colorization_pretrained.py: batch 512,
    # 50 epochs of train[4096:], adafactor lr 1e-3, wd 1e-6, cosine with 4k warmup, no clipping.
    "stage2": cu.paper_stage(learning_rate=1e-3, weight_decay=1e-6,
                              total_steps=50 * _STAGE1_TRAIN // 512, batch_size=512,
                              eval_every=1_000, evaluator_batches=20),
}


# big_vision vqvae_imagenet2012_colorization.py / train_*_colorization_pretrained.py: train on
# "train[4096:]" with decode_jpeg_and_inception_crop(512) and flip_lr; evaluate the whole image
# resized to 512.
DATA = {"source": "tfds:imagenet2012", "image_size": 512, "crop": "inception",
        "random_flip": True, "eval_crop": "resize", "train_skip": 4_096}
# UViM's colorization metric is ColTran's FID-5k (evaluators/proj/uvim/coltran_fid.py;
# uvim/coltran_fid.py). It needs the converted InceptionV3: make inception.
OUTPUT = {"name": "colorization", "fid": "coltran"}
TINY_DATA = {"train_skip": 0}
TINY_OUTPUT = {"fid": "none"}  # PSNR only on the tiny runs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Comma list of presets: a quantizer, tiny|paper, stage1|stage2, nosplit, nocontext,
    official (with vq,paper: big_vision's published checkpoints, docs/official_checkpoints.md)."""
    return cu.uvim_config(arg, paper_stages=PAPER, data=DATA, output=OUTPUT,
                          tiny_data=TINY_DATA, tiny_output=TINY_OUTPUT)
