"""What a UViM dense output defines: its target tensor, context image, loss, prediction, metric.

The stage-I and stage-II tasks are generic; each task's output (depth, colorization, panoptic)
plugs in through this small interface, as the UViM paper's per-task heads do.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fsq_jax import images as image_lib

Batch = Mapping[str, jax.Array]


class DenseOutput(abc.ABC):
    """A dense prediction task: image -> per-pixel output, encoded as a few target channels.

    Targets and logits are dicts `{name: [B, H, W, channels]}`; the stage-I model folds them into
    patches itself. `target_channels()` fixes the channel count of each entry.
    """

    name: str = ""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @abc.abstractmethod
    def target_channels(self) -> dict[str, int]:
        """`{target name: channels}` of the oracle input and the decoder output."""

    @abc.abstractmethod
    def targets(self, batch: Batch) -> dict[str, jax.Array]:
        """The task output as model inputs: `{name: float32 [B, H, W, channels]}`."""

    def context(self, batch: Batch) -> jax.Array:
        """The input image the model conditions on: float32 [B, H, W, 3] in [-1, 1]."""
        return image_lib.to_float(batch["image"])

    @abc.abstractmethod
    def loss(self, logits: Mapping[str, jax.Array], batch: Batch
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean training loss (scalar) and per-term metrics; logits as `targets()` shapes."""

    @abc.abstractmethod
    def predict(self, logits: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Decoder outputs -> the task's output (e.g. depth in metres)."""

    @abc.abstractmethod
    def ground_truth(self, batch: Batch) -> dict[str, jax.Array]:
        """The task output read from the batch, same keys and shapes as `predict`."""

    @abc.abstractmethod
    def visualize(self, output: Mapping[str, np.ndarray]) -> np.ndarray:
        """A task output (from `predict` or `ground_truth`) as uint8 RGB [B, H, W, 3]."""

    @abc.abstractmethod
    def new_metric(self) -> Metric:
        """A fresh streaming accumulator of the task's evaluation metric."""

    def batch_metrics(self, prediction: Mapping[str, jax.Array], batch: Batch
                      ) -> dict[str, jax.Array]:
        """Cheap per-batch metrics inside the jitted eval step (default: none)."""
        del prediction, batch
        return {}


class Metric(abc.ABC):
    """Streaming evaluation metric: `update` with numpy predictions and batches, then `result`."""

    @abc.abstractmethod
    def update(self, prediction: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]
               ) -> None:
        """Adds one batch."""

    @abc.abstractmethod
    def result(self) -> dict[str, float]:
        """The metric values over everything added."""


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-pixel cross-entropy: logits [..., C], int labels [...] -> [...] float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` where `mask` is true (0 when nothing is)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@jax.custom_vjp
def fused_softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """`softmax_cross_entropy` with a hand-written gradient that keeps only the log-partition
    [...] for the backward pass, not the float32 softmax [..., C] autodiff of `log_softmax`
    keeps (nor the zeros [..., C] the transpose of its label gather scatters into).

    For the per-pixel 256-bin depth logits that is two copies of the largest array of the step
    fewer (benchmarks/memory.py, docs/performance.md). Values agree with `softmax_cross_entropy`
    to float32 rounding; gradient w.r.t. logits: (softmax - one_hot) * g, in the logits' dtype.

    Args:
      logits: [..., C] float.
      labels: [...] int, in [0, C).

    Returns:
      [...] float32.
    """
    return _fused_forward(logits, labels)[0]


def _fused_forward(logits: jax.Array, labels: jax.Array
                   ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    # The same operations in the same order as `softmax_cross_entropy` (jax.nn.log_softmax),
    # so the values are bit-identical: log(sum(exp(x - max))) - (x[label] - max).
    x = logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    peak = jnp.max(x, axis=-1, keepdims=True)
    log_sum = jnp.log(jnp.sum(jnp.exp(x - peak), axis=-1))
    picked = jnp.take_along_axis(x - peak, labels[..., None], axis=-1)[..., 0]
    return log_sum - picked, (logits, labels, log_sum + peak[..., 0])


def _fused_backward(residuals: tuple[jax.Array, jax.Array, jax.Array], g: jax.Array
                    ) -> tuple[jax.Array, None]:
    logits, labels, log_z = residuals
    classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    softmax = jnp.exp(logits.astype(jnp.float32) - log_z[..., None])
    one_hot = (classes == labels[..., None]).astype(jnp.float32)
    return ((softmax - one_hot) * g[..., None]).astype(logits.dtype), None


fused_softmax_cross_entropy.defvjp(_fused_forward, _fused_backward)
