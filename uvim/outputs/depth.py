"""Monocular depth as a UViM task: depth discretised into bins, softmax loss, RMSE in metres.

Following UViM, depth in [min_depth, max_depth] is quantised to `bins` classes; the model
reconstructs a distribution per pixel and the prediction is the centre of the argmax bin. The
loss averages over every pixel and zeroes those of bin 0 (missing depth is 0); the metric is
big_vision's NYU evaluator (per-image errors at native resolution, averaged over images).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

from fsq_jax.config_lib import require
from fsq_jax.data.preprocess import NATIVE_PREFIX, NATIVE_SHAPE_KEY
from fsq_jax.eval import depth as depth_metrics
from uvim.outputs.base import Batch, DenseOutput, Metric, fused_softmax_cross_entropy, masked_mean

NAME = "depth"
NATIVE_DEPTH = NATIVE_PREFIX + "depth"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DepthConfig:
    """`output.*` of depth: metres in [min_depth, max_depth] quantised to `bins` classes (UViM:
    256 bins over [1e-3, 10] m, big_vision configs/proj/uvim/vqvae_nyu_depth.py)."""

    name: Literal["depth"]
    bins: int
    min_depth: float
    max_depth: float

    def __post_init__(self):
        require(self.bins > 0, "bins", "must be > 0")
        require(self.max_depth > 0, "max_depth", "must be > 0")
        require(0 <= self.min_depth < self.max_depth, "min_depth",
                f"must be in [0, max_depth={self.max_depth})")


def depth_to_bins(depth: jax.Array, bins: int, min_depth: float, max_depth: float) -> jax.Array:
    """Metres [...] -> int32 bin index in [0, bins - 1] (values outside the range are clipped)."""
    scaled = (depth - min_depth) / (max_depth - min_depth) * bins
    return jnp.clip(jnp.floor(scaled), 0, bins - 1).astype(jnp.int32)


def bins_to_depth(index: jax.Array, bins: int, min_depth: float, max_depth: float) -> jax.Array:
    """Bin index [...] -> metres at the bin centre (undoes the floor in expectation)."""
    return (index.astype(jnp.float32) + 0.5) / bins * (max_depth - min_depth) + min_depth


def valid_depth(depth: jax.Array, min_depth: float, max_depth: float) -> jax.Array:
    """Pixels with a usable ground truth: min_depth < depth < max_depth (0 marks missing)."""
    return (depth > min_depth) & (depth < max_depth)


class DepthMetric(Metric):
    """Mean over images of per-image RMSE (UViM's NYU evaluator), abs_rel, log10 and deltas.

    Over the pixels whose ground truth lies in (min_depth, max_depth). When the batch carries
    the native-resolution ground truth (`native_depth`, `native_shape`: `data.eval_native_shape`)
    each prediction is resized (nearest) to it and scored there, as big_vision's
    evaluators/proj/uvim/nyu_depth.py; otherwise at the model's resolution.
    """

    def __init__(self, min_depth: float, max_depth: float):
        self.metrics = depth_metrics.DepthMetrics(max(min_depth, 1e-6), max_depth)

    def update(self, prediction: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]
               ) -> None:
        predicted = np.asarray(prediction["depth"], np.float32)
        if NATIVE_DEPTH in batch:
            self.metrics.update_native(predicted, np.asarray(batch[NATIVE_DEPTH], np.float32),
                                       np.asarray(batch[NATIVE_SHAPE_KEY]))
        else:
            self.metrics.update(predicted, np.asarray(batch["depth"], np.float32))

    def result(self) -> dict[str, float]:
        return self.metrics.result()


class DepthOutput(DenseOutput):
    """Depth: target = one-hot depth bin per pixel; loss = softmax cross-entropy, bin 0 masked."""

    name = NAME

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.bins = int(config.bins)
        self.min_depth = float(config.min_depth)
        self.max_depth = float(config.max_depth)

    def target_channels(self) -> dict[str, int]:
        return {"depth": self.bins}

    def _bins(self, depth: jax.Array) -> jax.Array:
        return depth_to_bins(depth, self.bins, self.min_depth, self.max_depth)

    def targets(self, batch: Batch) -> dict[str, jax.Array]:
        return {"depth": jax.nn.one_hot(self._bins(batch["depth"]), self.bins)}

    def loss(self, logits: Mapping[str, jax.Array], batch: Batch
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        bins = self._bins(batch["depth"])
        # Fused: keeps no float32 softmax of the 256-bin logits for the backward pass.
        per_pixel = fused_softmax_cross_entropy(logits["depth"], bins)
        # big_vision trainers/proj/uvim/depth_task.py loss_fn: the cross-entropy of every pixel
        # with bin 0 (missing depth, 0 m, lands there) zeroed, then the mean over all pixels
        # (vqvae.py: jnp.mean); depths beyond max_depth train the last bin.
        loss = jnp.mean(jnp.where(bins != 0, per_pixel, 0.0))
        return loss, {"loss_depth": loss}

    def predict(self, logits: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        index = jnp.argmax(logits["depth"], axis=-1)
        return {"depth": bins_to_depth(index, self.bins, self.min_depth, self.max_depth)}

    def ground_truth(self, batch: Batch) -> dict[str, jax.Array]:
        return {"depth": batch["depth"]}

    def batch_metrics(self, prediction: Mapping[str, jax.Array], batch: Batch
                      ) -> dict[str, jax.Array]:
        depth = batch["depth"]
        valid = valid_depth(depth, self.min_depth, self.max_depth)
        mse = masked_mean(jnp.square(prediction["depth"] - depth), valid)
        return {"rmse_pixels": jnp.sqrt(mse)}

    def visualize(self, output: Mapping[str, np.ndarray]) -> np.ndarray:
        depth = np.asarray(output["depth"], np.float32)
        scaled = np.clip((depth - self.min_depth) / (self.max_depth - self.min_depth), 0, 1)
        rgb = matplotlib.colormaps["viridis"](scaled)[..., :3]
        return (rgb * 255).round().astype(np.uint8)

    def new_metric(self) -> DepthMetric:
        return DepthMetric(self.min_depth, self.max_depth)
