"""The small quantized autoencoder (fsq_jax.tasks.autoencoder): FSQ vs VQ as a config swap.

`get_config("fsq,tiny")` trains in seconds on a laptop CPU; `"vq,tiny"` swaps the quantizer.
"""

from __future__ import annotations

import ml_collections

from fsq_jax.tasks import autoencoder

QUANTIZERS = ("fsq", "vq")
PRESETS = ("tiny", "small")


def _tiny(config: ml_collections.ConfigDict) -> None:
    config.total_steps = 20
    config.batch_size = 8
    config.eval_batch_size = 8
    config.log_every = 5
    config.eval_every = 10
    config.images_every = 10
    config.checkpoint_every = 10
    config.eval_steps = 2
    config.evaluators.codebook_batches = 2
    config.data.image_size = 16
    config.model.width = 8
    config.model.num_down = 2


def _small(config: ml_collections.ConfigDict) -> None:
    config.total_steps = 2000
    config.batch_size = 32
    config.eval_batch_size = 32
    config.log_every = 50
    config.eval_every = 500
    config.images_every = 500
    config.checkpoint_every = 500
    config.data.image_size = 32
    config.model.width = 32
    config.model.num_down = 2


def get_config(arg: str = "fsq,tiny") -> ml_collections.ConfigDict:
    """`arg`: comma list with one quantizer (fsq | vq) and optionally one preset (tiny | small)."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    unknown = [p for p in parts if p not in QUANTIZERS + PRESETS]
    if unknown:
        raise ValueError(
            f"get_config({arg!r}): unknown preset {unknown[0]!r}; allowed: "
            f"{', '.join(QUANTIZERS + PRESETS)}"
        )
    quantizer = next((p for p in parts if p in QUANTIZERS), "fsq")
    config = autoencoder.default_config(quantizer)
    if quantizer == "fsq":
        config.quantizer.levels = (8, 5, 5, 5)  # 1000 codes
    else:
        config.quantizer.codebook_size = 1024
        config.quantizer.dim = 8
    for preset in parts:
        if preset == "tiny":
            _tiny(config)
        elif preset == "small":
            _small(config)
    return config
