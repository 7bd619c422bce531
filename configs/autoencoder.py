"""The small quantized autoencoder (fsq_jax.tasks.autoencoder): FSQ vs VQ as a config swap.

`get_config("fsq,tiny")` trains in seconds on a laptop CPU; `"vq,tiny"` (or
`--config.quantizer.name=vq`) swaps the quantizer. Presets: a quantizer (any registered name),
a size (`tiny` | `small`).
"""

from __future__ import annotations

import ml_collections

from fsq_jax import config_lib as cl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: comma list of one quantizer (default fsq) and one size (default tiny)."""
    arg = cl.parse_arg(arg, quantizer=cl.Choice("fsq", cl.names()),
                       size=cl.Choice("tiny", ("tiny", "small")))
    config = cl.loop(task="fsq_jax.tasks.autoencoder:AutoencoderTask")
    config.model = ml_collections.ConfigDict(
        {"width": 32, "num_down": 2, "compute_dtype": "float32"})
    # ~2^10 codes: FSQ (8, 5, 5, 5) (Table 1), VQ 1024 codes of dimension 8.
    config.quantizer = cl.quantizer(arg.quantizer, log2_size=10, vq={"dim": 8})
    config.optimizer = cl.optimizer(learning_rate=1e-3)
    # Codebook usage over this many validation batches at every evaluation (0 disables it).
    config.evaluators = ml_collections.ConfigDict({"codebook_batches": 4})
    if arg.size == "tiny":
        config.update(total_steps=20, batch_size=8, eval_batch_size=8, log_every=5,
                      eval_every=10, images_every=10, checkpoint_every=10, eval_steps=2)
        config.evaluators.codebook_batches = 2
        config.data.image_size = 16
        config.model.width = 8
    else:  # small
        config.update(total_steps=2000, batch_size=32, eval_batch_size=32, log_every=50,
                      eval_every=500, images_every=500, checkpoint_every=500)
        config.data.image_size = 32
    return config
