"""Panoptic segmentation as a UViM task: a 2-channel (semantic, instance) target, PQ to evaluate.

UViM writes a panoptic map as two per-pixel classifications: the semantic class (+1, 0 = void)
and a canonical instance index (instances numbered 1..K by their centre of mass, row-major, 0 for
stuff and void). The canonical numbering makes the target a function of the segmentation alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fsq_jax.config_lib import require
from fsq_jax.eval import panoptic as eval_panoptic
from uvim.outputs.base import Batch, DenseOutput, Metric, softmax_cross_entropy

NAME = "panoptic"
_SENTINEL = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True, kw_only=True)
class PanopticConfig:
    """`output.*` of panoptic segmentation (UViM COCO: 133 classes + void, 100 instance slots;
    big_vision configs/proj/uvim/vqvae_coco_panoptic.py). `thing_classes` lists the class ids
    with instances (PQ treats the others as stuff)."""

    name: Literal["panoptic"]
    num_classes: int
    max_instances: int
    thing_classes: tuple[int, ...]

    def __post_init__(self):
        require(self.num_classes > 0, "num_classes", "must be > 0")
        require(self.max_instances > 0, "max_instances", "must be > 0")
        bad = [c for c in self.thing_classes if not 0 <= c < self.num_classes]
        require(not bad, "thing_classes", f"must lie in [0, num_classes={self.num_classes}), "
                f"got {bad}")


def _canonical_instances(instance: jax.Array, max_instances: int) -> jax.Array:
    """One image: instance ids [H, W] (>0 things) -> canonical index in [0, max_instances]."""
    h, w = instance.shape
    flat = instance.reshape(-1)
    ids = jnp.unique(jnp.where(flat > 0, flat, _SENTINEL), size=max_instances + 1,
                     fill_value=_SENTINEL)
    slot = jnp.clip(jnp.searchsorted(ids, flat), 0, max_instances)
    found = (flat > 0) & (ids[slot] == flat)
    slot = jnp.where(found, slot, max_instances + 1)  # a dump segment for stuff/void pixels
    num = max_instances + 2
    ys, xs = jnp.divmod(jnp.arange(h * w, dtype=jnp.int32), w)
    count = jax.ops.segment_sum(jnp.ones_like(flat, jnp.float32), slot, num)
    cy = jax.ops.segment_sum(ys.astype(jnp.float32), slot, num) / jnp.maximum(count, 1)
    cx = jax.ops.segment_sum(xs.astype(jnp.float32), slot, num) / jnp.maximum(count, 1)
    present = (count > 0) & (jnp.arange(num) <= max_instances)
    present = present & (jnp.concatenate([ids, jnp.array([_SENTINEL])]) != _SENTINEL)
    key = jnp.where(present, cy * w + cx, jnp.inf)
    rank = jnp.argsort(jnp.argsort(key, stable=True), stable=True)
    canonical = jnp.where(present & (rank < max_instances), rank + 1, 0)
    return canonical[slot].reshape(h, w).astype(jnp.int32)


def encode_panoptic(semantic: jax.Array, instance: jax.Array, max_instances: int) -> jax.Array:
    """Semantic + instance maps -> UViM's 2-channel panoptic target.

    Args:
      semantic: int [..., H, W] class id, -1 for void.
      instance: int [..., H, W] instance id, > 0 for thing instances, 0 for stuff and void.
      max_instances: instance slots; instances beyond it (by canonical order) become 0.

    Returns:
      int32 [..., H, W, 2]: channel 0 = semantic + 1 (0 = void); channel 1 = canonical instance
      index (1..K ordered by centre of mass, row-major; 0 = no instance).
    """
    semantic = jnp.asarray(semantic, jnp.int32)
    instance = jnp.asarray(instance, jnp.int32)
    flat = instance.reshape((-1, *instance.shape[-2:]))
    canonical = jax.vmap(lambda x: _canonical_instances(x, max_instances))(flat)
    canonical = canonical.reshape(instance.shape)
    return jnp.stack([jnp.maximum(semantic, -1) + 1, canonical], axis=-1)


def decode_panoptic(encoded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse of `encode_panoptic`: [..., H, W, 2] -> (semantic [..., H, W] with -1 void,
    instance [..., H, W] canonical ids, 0 for stuff and void)."""
    return encoded[..., 0] - 1, encoded[..., 1]


def panoptic_from_logits(semantic_logits: jax.Array, instance_logits: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """Decoder logits -> a consistent panoptic map (UViM's rule).

    Each predicted instance takes the class with the largest summed probability over its
    pixels, so an instance never splits into several classes; pixels without an instance take
    their own argmax class.

    Args:
      semantic_logits: [B, H, W, num_classes + 1] (index 0 = void).
      instance_logits: [B, H, W, max_instances + 1] (index 0 = no instance).

    Returns:
      semantic [B, H, W] (-1 void) and instance [B, H, W] (0 = none).
    """
    b, h, w, classes = semantic_logits.shape
    slots = instance_logits.shape[-1]
    instance = jnp.argmax(instance_logits, axis=-1).astype(jnp.int32)
    probs = jax.nn.softmax(semantic_logits.astype(jnp.float32), axis=-1)

    def per_image(p, ins):
        votes = jax.ops.segment_sum(p.reshape(-1, classes), ins.reshape(-1), slots)
        return jnp.argmax(votes, axis=-1)

    instance_class = jax.vmap(per_image)(probs, instance)  # [B, slots]
    own = jnp.argmax(probs, axis=-1)
    voted = jnp.take_along_axis(instance_class, instance.reshape(b, -1), axis=1).reshape(b, h, w)
    semantic = jnp.where(instance > 0, voted, own) - 1
    instance = jnp.where(semantic >= 0, instance, 0)
    return semantic.astype(jnp.int32), instance


class PanopticQuality(Metric):
    """UViM's PQ, SQ, RQ in percent: `fsq_jax.eval.panoptic` (panopticapi's matching rules).

    Keys whose class subset is empty (e.g. `pq_things` with no thing segment) are left out
    rather than reported as NaN, so logged curves stay finite.
    """

    def __init__(self, num_classes: int, thing_classes: tuple[int, ...]):
        self.num_classes = num_classes
        self._quality = eval_panoptic.PanopticQuality(thing_classes)

    def update(self, prediction: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]
               ) -> None:
        self._quality.update(np.asarray(batch["panoptic_semantic"]),
                             np.asarray(batch["panoptic_instance"]),
                             np.asarray(prediction["semantic"]),
                             np.asarray(prediction["instance"]))

    def result(self) -> dict[str, float]:
        return {key: 100.0 * value for key, value in self._quality.result().items()
                if not math.isnan(value)}


class PanopticOutput(DenseOutput):
    """Panoptic: targets = one-hot semantic (+void) and canonical instance index; loss = CE."""

    name = NAME

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.num_classes = int(config.num_classes)
        self.max_instances = int(config.max_instances)
        self.thing_classes = tuple(int(c) for c in config.thing_classes)

    def target_channels(self) -> dict[str, int]:
        return {"semantic": self.num_classes + 1, "instance": self.max_instances + 1}

    def _encoded(self, batch: Batch) -> jax.Array:
        return encode_panoptic(batch["panoptic_semantic"], batch["panoptic_instance"],
                               self.max_instances)

    def targets(self, batch: Batch) -> dict[str, jax.Array]:
        encoded = self._encoded(batch)
        return {"semantic": jax.nn.one_hot(encoded[..., 0], self.num_classes + 1),
                "instance": jax.nn.one_hot(encoded[..., 1], self.max_instances + 1)}

    def loss(self, logits: Mapping[str, jax.Array], batch: Batch
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        encoded = self._encoded(batch)
        semantic = jnp.mean(softmax_cross_entropy(logits["semantic"], encoded[..., 0]))
        instance = jnp.mean(softmax_cross_entropy(logits["instance"], encoded[..., 1]))
        return semantic + instance, {"loss_semantic": semantic, "loss_instance": instance}

    def predict(self, logits: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        semantic, instance = panoptic_from_logits(logits["semantic"], logits["instance"])
        return {"semantic": semantic, "instance": instance}

    def ground_truth(self, batch: Batch) -> dict[str, jax.Array]:
        semantic, instance = decode_panoptic(self._encoded(batch))
        return {"semantic": semantic, "instance": instance}

    def batch_metrics(self, prediction: Mapping[str, jax.Array], batch: Batch
                      ) -> dict[str, jax.Array]:
        semantic = batch["panoptic_semantic"]
        return {"pixel_accuracy": jnp.mean(prediction["semantic"] == semantic)}

    def visualize(self, output: Mapping[str, np.ndarray]) -> np.ndarray:
        semantic = np.asarray(output["semantic"], np.int64)
        instance = np.asarray(output["instance"], np.int64)
        rng = np.random.default_rng(0)
        palette = rng.integers(40, 256, size=(self.num_classes + 1, 3))
        rgb = palette[semantic + 1].astype(np.float64)
        shade = np.where(instance > 0, 0.55 + 0.45 * ((instance * 0.37) % 1.0), 1.0)
        rgb = np.where((semantic < 0)[..., None], 0.0, rgb * shade[..., None])
        return rgb.round().astype(np.uint8)

    def new_metric(self) -> PanopticQuality:
        return PanopticQuality(self.num_classes, self.thing_classes)
