"""The codebook-size study (FSQ paper, Figure 3): MaskGIT with VQ and FSQ from 2^4 to 2^16 codes.

`get_config("tiny")` runs on a CPU in under an hour (procedural scenes at 32x32, few steps);
`get_config("paper")` is the paper's study (ImageNet 128x128, MaskGIT settings). FSQ levels come
from the paper's Table 1 (`fsq_jax.reporting.paper.RECOMMENDED_LEVELS`); VQ gets 2^k codes.
`scripts/sweep.py` trains both stages per (quantizer, size) and plots the four panels.
"""

from __future__ import annotations

import ml_collections

PRESETS = ("tiny", "paper")
QUANTIZERS = ("vq", "fsq")


def fsq_levels(log2_size: int) -> tuple[int, ...]:
    """The paper's recommended FSQ levels for a target codebook size of 2^log2_size (Table 1)."""
    from fsq_jax.reporting.paper import RECOMMENDED_LEVELS

    if log2_size not in RECOMMENDED_LEVELS:
        raise ValueError(f"log2_sizes: no recommended FSQ levels for 2^{log2_size}; Table 1 has "
                         f"2^k for k in {sorted(RECOMMENDED_LEVELS)}")
    return tuple(RECOMMENDED_LEVELS[log2_size])


def quantizer_overrides(quantizer: str, log2_size: int) -> dict[str, object]:
    """Dotted tokenizer overrides giving `quantizer` a codebook of (about) 2^log2_size codes."""
    if quantizer == "fsq":
        return {"quantizer.levels": fsq_levels(log2_size)}
    if quantizer == "vq":
        return {"quantizer.codebook_size": 2**log2_size}
    raise ValueError(f"quantizers: unknown quantizer {quantizer!r}; one of {QUANTIZERS}")


def _tiny() -> ml_collections.ConfigDict:
    """32x32 procedural scenes, 8x8 tokens, sizes 2^4 ... 2^12; sized so that its 10 runs (both
    stages, FID, usage, compression) finish within an hour on a 2-core CPU (about 6 minutes per
    run on a shared one). 2^14 and 2^16 run unchanged with
    `--override "log2_sizes=(4,6,8,10,12,14,16)"`, but cost far more on a CPU: VQ's entropy
    penalty over 2^16 codes alone makes its tokenizer ~15x slower (0.2 vs 3 steps/s)."""
    return ml_collections.ConfigDict(
        {
            "preset": "tiny",
            "maskgit_size": "tiny",  # the configs/maskgit/*.py preset every run starts from
            "quantizers": QUANTIZERS,
            "log2_sizes": (4, 6, 8, 10, 12),
            # Overrides of configs/maskgit/tokenizer.py:<quantizer>,tiny (nested = dotted keys).
            "tokenizer": {
                "total_steps": 300,
                "batch_size": 16,
                "log_every": 100,
                "eval_every": 0,  # evaluate once, at the end
                "images_every": 0,
                "checkpoint_every": 0,
                "eval_steps": 1,
                "keep_checkpoints": 1,
                # A plain autoencoder at this scale: the quantizer is what the study varies, and
                # the adversarial terms only pay off over far more steps than the tiny budget.
                "loss": {"adversarial_weight": 0.0, "r1_weight": 0.0},
                "discriminator": {"max_filters": 16},
                # FID on 64 images: biased upwards but comparable across the runs (same n).
                "evaluators": {"fid": True, "usage": False, "num_images": 64, "batch_size": 64},
            },
            # Overrides of configs/maskgit/transformer.py:<quantizer>,tiny.
            "transformer": {
                "total_steps": 300,
                "batch_size": 16,
                "log_every": 100,
                "eval_every": 0,
                "images_every": 0,
                "checkpoint_every": 0,
                "eval_steps": 1,
                "keep_checkpoints": 1,
                "model": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "mlp_dim": 256},
                "optimizer": {"warmup_steps": 30},
                "sampling": {"num_steps": 8},
                "evaluators": {"fid": True, "num_images": 64, "batch_size": 64},
            },
            # Codebook usage from tokens only (no decoder, no Inception), so it can use enough
            # images to see every code: 2048 images x 64 tokens = 2^17 tokens >= 2 x 2^16.
            "usage": {"num_images": 2048, "batch_size": 256},
            # Compression cost: a fixed random masking order in `num_steps` cosine groups.
            "compression": {"num_images": 64, "batch_size": 64, "num_steps": 8,
                            "order": "random", "seed": 0},
        }
    )


def _paper() -> ml_collections.ConfigDict:
    """FSQ paper, Sec. 4.2 / Figure 3: MaskGIT on ImageNet 128x128, VQ vs FSQ, codebook sizes
    2^4 ... 2^16 with the levels of Table 1; everything else as the MaskGIT presets in
    configs/maskgit/*.py (google-research/maskgit; 16x downsampling gives 8x8 tokens at 128)."""
    return ml_collections.ConfigDict(
        {
            "preset": "paper",
            "maskgit_size": "paper",
            "quantizers": QUANTIZERS,
            "log2_sizes": (4, 6, 8, 9, 10, 11, 12, 14, 16),
            "tokenizer": {"data": {"image_size": 128}},
            "transformer": {"data": {"image_size": 128}},
            "usage": {"num_images": 50_000, "batch_size": 256},
            "compression": {"num_images": 10_000, "batch_size": 64, "num_steps": 12,
                            "order": "random", "seed": 0},
        }
    )


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the first bad field of a sweep config."""
    if not config.quantizers:
        raise ValueError("quantizers: must list at least one of 'vq', 'fsq'")
    for quantizer in config.quantizers:
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizers: unknown quantizer {quantizer!r}; one of {QUANTIZERS}")
    if not config.log2_sizes:
        raise ValueError("log2_sizes: must list at least one size")
    for log2_size in config.log2_sizes:
        if "fsq" in config.quantizers:
            fsq_levels(log2_size)
        if not 1 <= log2_size <= 20:
            raise ValueError(f"log2_sizes: {log2_size} is outside [1, 20]")
    for section in ("usage", "compression"):
        for field in ("num_images", "batch_size"):
            if config[section][field] < 1:
                raise ValueError(f"{section}.{field} = {config[section][field]}: must be >= 1")
    if config.compression.num_steps < 1:
        raise ValueError(f"compression.num_steps = {config.compression.num_steps}: must be >= 1")
    if config.compression.order not in ("random", "raster"):
        raise ValueError(f"compression.order = {config.compression.order!r}: 'random' or "
                         "'raster'")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep of preset `arg` ('tiny' (default) or 'paper')."""
    preset = (arg or "tiny").strip()
    if preset not in PRESETS:
        raise ValueError(f"config arg {arg!r}: unknown preset; one of {PRESETS}")
    config = _tiny() if preset == "tiny" else _paper()
    check_config(config)
    return config
