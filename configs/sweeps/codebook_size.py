"""The codebook-size study (FSQ paper, Figure 3): MaskGIT with VQ and FSQ from 2^4 to 2^16 codes.

`get_config("tiny")` runs on a CPU in about 15 minutes (procedural scenes at 32x32, 300 steps);
`get_config("small")` spans Table 1's sizes 2^6 ... 2^14 with five times the training, for the
trends of Figure 3, in under an hour on a 2-core CPU (`scripts/sweep.py --jobs 2`);
`get_config("paper")` is the paper's study (ImageNet 128x128, MaskGIT settings, App. A.4.1). FSQ
levels come from the paper's Table 1 (the quantizer presets table of `fsq_jax.config_lib`); VQ
gets 2^k codes. `scripts/sweep.py` (library: `maskgit.sweep`) trains both stages per
(quantizer, size) and plots the four panels.

Both presets train stage II without classifier-free guidance: App. A.4.1 copies "all other
hyperparameters" from MaskGIT's configs (which have none) and the paper brings guidance in for
its ImageNet-256 models only (Sec. 4.3). The compression cost uses M2T's deterministic masking
schedule (QLDS locations, group sizes floor(N (t/T)^2.2)), as Sec. 4.2 says.
"""

from __future__ import annotations

import ml_collections

from fsq_jax import config_lib as cl

# Stage-II settings of the study that differ from the MaskGIT presets: no guidance (and so no
# label dropout to train the unconditional input).
NO_GUIDANCE = {"masking": {"label_dropout": 0.0}, "sampling": {"guidance_scale": 0.0}}


def _tiny() -> dict:
    """32x32 procedural scenes, 8x8 tokens, sizes 2^4 ... 2^12; sized so that its 10 runs (both
    stages, FID, usage, compression) finish within an hour on a 2-core CPU (about 6 minutes per
    run on a shared one). 2^14 and 2^16 run unchanged with `--config.log2_sizes=(4,...,16)`,
    but cost far more on a CPU: VQ's entropy penalty over 2^16 codes alone makes its tokenizer
    ~15x slower (0.2 vs 3 steps/s)."""
    return {
        "preset": "tiny",
        "maskgit_size": "tiny",  # the configs/maskgit/*.py preset every run starts from
        "quantizers": ("vq", "fsq"),
        "log2_sizes": (4, 6, 8, 10, 12),
        # Overrides of configs/maskgit/tokenizer.py:<quantizer>,tiny (nested = dotted keys).
        "tokenizer": {
            "total_steps": 300, "batch_size": 16, "log_every": 100,
            "eval_every": 0, "images_every": 0, "checkpoint_every": 0,  # once, at the end
            "eval_steps": 1, "keep_checkpoints": 1,
            # A plain autoencoder at this scale: the quantizer is what the study varies, and
            # the adversarial terms only pay off over far more steps than the tiny budget.
            "loss": {"adversarial_weight": 0.0, "r1_weight": 0.0},
            "discriminator": {"max_filters": 16},
            # FID on 64 images: biased upwards but comparable across the runs (same n).
            "evaluators": {"fid": True, "usage": False, "num_images": 64, "batch_size": 64},
        },
        # Overrides of configs/maskgit/transformer.py:<quantizer>,tiny.
        "transformer": {
            "total_steps": 300, "batch_size": 16, "log_every": 100,
            "eval_every": 0, "images_every": 0, "checkpoint_every": 0,
            "eval_steps": 1, "keep_checkpoints": 1,
            "model": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "mlp_dim": 256},
            "optimizer": {"warmup_steps": 30},
            "masking": NO_GUIDANCE["masking"],
            "sampling": {"num_steps": 8, **NO_GUIDANCE["sampling"]},
            "evaluators": {"fid": True, "num_images": 64, "batch_size": 64},
        },
        # Codebook usage from tokens only (no decoder, no Inception), so it can use enough
        # images to see every code: 2048 images x 64 tokens = 2^17 tokens >= 2 x 2^16.
        "usage": {"num_images": 2048, "batch_size": 256},
        # Compression cost: M2T's schedule (QLDS order, power-2.2 group sizes) in 8 steps for
        # the 8x8 tokens (the paper's 12 steps are for ImageNet's).
        "compression": {"num_images": 64, "batch_size": 64, "num_steps": 8, "order": "qlds",
                        "alpha": 2.2, "seed": 0},
    }


def _small() -> dict:
    """The tiny study made long enough to show Figure 3's trends, within an hour on a 2-core CPU
    with `--jobs 2` (two runs at a time): sizes 2^6 ... 2^14 (Table 1's range), stage I 1,500
    steps and stage II 1,000 (5x and 3.3x the tiny preset's), FID on 128 images (half the
    noise of the tiny preset's 64; still only comparable between runs of this sweep), usage
    over 8,192 images (2^19 tokens, 32 per code at 2^14, as the paper counts usage over
    ImageNet's validation set). 2^9 and 2^11 run with `--config.log2_sizes=(6,8,9,10,11,12,14)`
    at about 1.4x the time."""
    config = _tiny()
    config["preset"] = "small"
    config["log2_sizes"] = (6, 8, 10, 12, 14)
    fid = {"fid": True, "usage": False, "num_images": 128, "batch_size": 64}
    config["tokenizer"].update({"total_steps": 1_500, "log_every": 250,
                                "evaluators": fid})
    config["transformer"].update({"total_steps": 1_000, "log_every": 250,
                                  "optimizer": {"warmup_steps": 100},
                                  "evaluators": {k: v for k, v in fid.items() if k != "usage"}})
    config["usage"] = {"num_images": 8_192, "batch_size": 256}
    config["compression"] = {**config["compression"], "num_images": 128}
    return config


def _paper() -> dict:
    """FSQ paper, Sec. 4.2 / Figure 3 / App. A.4.1: MaskGIT on ImageNet 128x128, VQ vs FSQ,
    codebook sizes 2^4 ... 2^16 with the levels of Table 1; stage I ~500k steps and stage II
    ~1M steps, both at batch 256 (100 and 200 epochs); everything else as the MaskGIT presets
    in configs/maskgit/*.py (google-research/maskgit; 16x downsampling: 8x8 tokens at 128)."""
    return {
        "preset": "paper",
        "maskgit_size": "paper",
        "quantizers": ("vq", "fsq"),
        "log2_sizes": tuple(sorted(cl.RECOMMENDED_LEVELS)),
        # A.4.1: "100 epochs for Stage I, split into ~500k steps of batch size 256".
        "tokenizer": {"data": {"image_size": 128}, "total_steps": 500_000, "batch_size": 256},
        # A.4.1: "200 epochs split into ~1M steps for Stage II, also using batch size 256".
        "transformer": {"data": {"image_size": 128}, "total_steps": 1_000_000,
                        "batch_size": 256, **NO_GUIDANCE},
        # Sec. 4.2: codebook usage "when encoding the validation set" (ImageNet's 50k images).
        "usage": {"num_images": 50_000, "batch_size": 256},
        # Sec. 4.2: M2T's deterministic schedule; M2T's main results: alpha 2.2, S = 12 steps.
        "compression": {"num_images": 10_000, "batch_size": 64, "num_steps": 12,
                        "order": "qlds", "alpha": 2.2, "seed": 0},
    }


PRESETS = {"tiny": _tiny, "small": _small, "paper": _paper}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep of preset `arg` ('tiny' (default), 'small' or 'paper')."""
    arg = cl.parse_arg(arg, size=cl.Choice("tiny", tuple(PRESETS)))
    return ml_collections.ConfigDict(PRESETS[arg.size]())
