"""The output every quantizer returns, so FSQ and VQ are drop-in replacements for each other.

Models only read these fields; which quantizer produced them is a config choice.
"""

from __future__ import annotations

import flax.struct
import jax

# Flax collection holding a quantizer's mutable, non-trained state (EMA codebooks, counters).
STATE_COLLECTION = "quantizer_state"
# Rng stream a quantizer draws from (dead-code reseeding, k-means initialisation).
RNG_STREAM = "quantizer"


@flax.struct.dataclass
class QuantizerOutput:
    """What a quantizer hands back to the model.

    Attributes:
      quantized: same shape and dtype as the input `z`, with straight-through gradients.
      indices: int32 code indices, `z.shape[:-1]` (or `z.shape[:-1] + (num_codebooks,)`).
      loss: float32 scalar auxiliary loss to add to the task loss (0.0 for FSQ).
      metrics: float32 scalars worth logging (perplexity, commitment loss, ...).
    """

    quantized: jax.Array
    indices: jax.Array
    loss: jax.Array
    metrics: dict[str, jax.Array]
