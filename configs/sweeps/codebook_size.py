"""The codebook-size study (FSQ paper, Figure 3): MaskGIT with VQ and FSQ from 2^4 to 2^16 codes.

`get_config("tiny")` runs on a CPU in under an hour (procedural scenes at 32x32, few steps);
`get_config("paper")` is the paper's study (ImageNet 128x128, MaskGIT settings). FSQ levels come
from the paper's Table 1 (the quantizer presets table of `fsq_jax.config_lib`); VQ gets 2^k
codes. `scripts/sweep.py` (library: `maskgit.sweep`) trains both stages per (quantizer, size) and
plots the four panels.
"""

from __future__ import annotations

import ml_collections

from fsq_jax import config_lib as cl


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
            "sampling": {"num_steps": 8},
            "evaluators": {"fid": True, "num_images": 64, "batch_size": 64},
        },
        # Codebook usage from tokens only (no decoder, no Inception), so it can use enough
        # images to see every code: 2048 images x 64 tokens = 2^17 tokens >= 2 x 2^16.
        "usage": {"num_images": 2048, "batch_size": 256},
        # Compression cost: a fixed random masking order in `num_steps` cosine groups.
        "compression": {"num_images": 64, "batch_size": 64, "num_steps": 8, "order": "random",
                        "seed": 0},
    }


def _paper() -> dict:
    """FSQ paper, Sec. 4.2 / Figure 3: MaskGIT on ImageNet 128x128, VQ vs FSQ, codebook sizes
    2^4 ... 2^16 with the levels of Table 1; everything else as the MaskGIT presets in
    configs/maskgit/*.py (google-research/maskgit; 16x downsampling gives 8x8 tokens at 128)."""
    return {
        "preset": "paper",
        "maskgit_size": "paper",
        "quantizers": ("vq", "fsq"),
        "log2_sizes": tuple(sorted(cl.RECOMMENDED_LEVELS)),
        "tokenizer": {"data": {"image_size": 128}},
        "transformer": {"data": {"image_size": 128}},
        "usage": {"num_images": 50_000, "batch_size": 256},
        "compression": {"num_images": 10_000, "batch_size": 64, "num_steps": 12,
                        "order": "random", "seed": 0},
    }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep of preset `arg` ('tiny' (default) or 'paper')."""
    arg = cl.parse_arg(arg, size=cl.Choice("tiny", ("tiny", "paper")))
    return ml_collections.ConfigDict(_tiny() if arg.size == "tiny" else _paper())
