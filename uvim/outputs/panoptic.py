"""Panoptic segmentation as a UViM task: a 2-channel (semantic, instance) target, PQ to evaluate.

UViM (big_vision pp/proj/uvim/pp_ops.py `coco_panoptic`, `make_canonical`) writes a panoptic map
as two per-pixel classifications: the semantic class + 1 (0 = void) and a canonical segment
index: every segment, stuff and crowd regions included, numbered 1..K by its centre of mass
(row-major), 0 for void. The canonical numbering makes the target a function of the
segmentation alone. Predictions (big_vision trainers/proj/uvim/panoptic_task.py) take each
pixel's argmax slot, and each slot the class with the largest sum of semantic logits over its
pixels; PQ then scores every (class, slot) pair as a segment, as panopticapi does.
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
from fsq_jax.data.preprocess import NATIVE_PREFIX, NATIVE_SHAPE_KEY, resize_nearest
from fsq_jax.eval import panoptic as eval_panoptic
from uvim.outputs.base import Batch, DenseOutput, Metric, softmax_cross_entropy

NAME = "panoptic"
_SENTINEL = np.iinfo(np.int32).max
PANOPTIC_KEYS = ("panoptic_semantic", "panoptic_instance", "panoptic_crowd")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PanopticConfig:
    """`output.*` of panoptic segmentation (UViM COCO: 133 classes + void, 100 instance slots;
    big_vision configs/proj/uvim/vqvae_coco_panoptic.py `inputs`: semantics (133 + 1),
    instances (100)). `max_instances` is the number of instance channels: slot 0 is void, so
    up to `max_instances - 1` segments have a slot. `thing_classes` lists the class ids with
    instances (PQ's things; the others are its stuff)."""

    name: Literal["panoptic"]
    num_classes: int
    max_instances: int
    thing_classes: tuple[int, ...]

    def __post_init__(self):
        require(self.num_classes > 0, "num_classes", "must be > 0")
        require(self.max_instances > 1, "max_instances", "must be > 1 (slot 0 is void)")
        bad = [c for c in self.thing_classes if not 0 <= c < self.num_classes]
        require(not bad, "thing_classes", f"must lie in [0, num_classes={self.num_classes}), "
                f"got {bad}")


def _canonical_segments(semantic: jax.Array, instance: jax.Array, capacity: int) -> jax.Array:
    """One image: semantic + 1 [H, W] (0 void) and instance ids [H, W] -> canonical segment ids.

    A segment is a (semantic, instance) pair of a non-void pixel. The segments are numbered
    1..K by centre of mass, key `x + H * y` (big_vision `make_canonical`, main axis y); void
    pixels get 0. Of images with more than `capacity` segments only the `capacity` with the
    smallest (semantic, instance) are numbered; the others get `capacity + 1`.
    """
    h, w = instance.shape
    span = jnp.max(jnp.maximum(instance, 0)) + 1
    key = jnp.where(semantic > 0, semantic * span + jnp.maximum(instance, 0), _SENTINEL)
    flat = key.reshape(-1)
    ids = jnp.unique(flat, size=capacity, fill_value=_SENTINEL)
    slot = jnp.clip(jnp.searchsorted(ids, flat), 0, capacity - 1)
    found = (flat != _SENTINEL) & (ids[slot] == flat)
    slot = jnp.where(found, slot, capacity)  # a dump segment for void and overflow pixels
    num = capacity + 1
    ys, xs = jnp.divmod(jnp.arange(h * w, dtype=jnp.int32), w)
    count = jax.ops.segment_sum(jnp.ones_like(flat, jnp.float32), slot, num)
    cy = jax.ops.segment_sum(ys.astype(jnp.float32), slot, num) / jnp.maximum(count, 1)
    cx = jax.ops.segment_sum(xs.astype(jnp.float32), slot, num) / jnp.maximum(count, 1)
    present = (count > 0) & (jnp.arange(num) < capacity)
    order = jnp.where(present, cx + h * cy, jnp.inf)
    rank = jnp.argsort(jnp.argsort(order, stable=True), stable=True)
    canonical = jnp.where(present, rank + 1, 0)
    overflow = (flat != _SENTINEL) & ~found
    pixels = jnp.where(overflow, capacity + 1, canonical[slot])
    return pixels.reshape(h, w).astype(jnp.int32)


def encode_panoptic(semantic: jax.Array, instance: jax.Array, max_instances: int,
                    capacity: int | None = None) -> jax.Array:
    """Semantic + instance maps -> UViM's 2-channel panoptic target.

    Args:
      semantic: int [..., H, W] class id, -1 for void.
      instance: int [..., H, W] instance id (> 0 for thing instances, 0 for stuff and crowd:
        each distinct (class, id) pair is one segment).
      max_instances: instance slots (channels, slot 0 = void). Segments numbered
        `max_instances` or higher keep their number but have no slot: their one-hot target is
        all zeros and they add nothing to the loss (UViM's `one_hot` of an id beyond its 100).
      capacity: segments numbered per image (default 2 * max_instances; COCO has <= 98).

    Returns:
      int32 [..., H, W, 2]: channel 0 = semantic + 1 (0 = void); channel 1 = canonical segment
      index (1..K by centre of mass, row-major; 0 = void).
    """
    capacity = 2 * max_instances if capacity is None else capacity
    semantic = jnp.maximum(jnp.asarray(semantic, jnp.int32), -1) + 1
    instance = jnp.asarray(instance, jnp.int32)
    flat_semantic = semantic.reshape((-1, *semantic.shape[-2:]))
    flat_instance = instance.reshape((-1, *instance.shape[-2:]))
    canonical = jax.vmap(lambda s, i: _canonical_segments(s, i, capacity))(flat_semantic,
                                                                           flat_instance)
    return jnp.stack([semantic, canonical.reshape(instance.shape)], axis=-1)


def decode_panoptic(encoded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse of `encode_panoptic`: [..., H, W, 2] -> (semantic [..., H, W] with -1 void,
    instance [..., H, W] canonical segment ids, 0 for void)."""
    return encoded[..., 0] - 1, encoded[..., 1]


def panoptic_from_logits(semantic_logits: jax.Array, instance_logits: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """Decoder logits -> a consistent panoptic map (big_vision panoptic_task.py
    `panoptic_predictions_from_logits`, min_fraction 0).

    Each pixel takes its argmax slot; each slot (slot 0 included) takes the class with the
    largest sum of semantic logits over its pixels, so a segment never splits into classes.

    Args:
      semantic_logits: [B, H, W, num_classes + 1] (index 0 = void).
      instance_logits: [B, H, W, slots].

    Returns:
      semantic [B, H, W] (-1 void) and instance [B, H, W] (the slot; 0 where void).
    """
    b, h, w, classes = semantic_logits.shape
    slots = instance_logits.shape[-1]
    instance = jnp.argmax(instance_logits, axis=-1).astype(jnp.int32)
    logits = semantic_logits.astype(jnp.float32)

    def per_image(logit, ins):
        votes = jax.ops.segment_sum(logit.reshape(-1, classes), ins.reshape(-1), slots)
        return jnp.argmax(votes, axis=-1)

    slot_class = jax.vmap(per_image)(logits, instance)  # [B, slots]
    voted = jnp.take_along_axis(slot_class, instance.reshape(b, -1), axis=1).reshape(b, h, w)
    semantic = voted.astype(jnp.int32) - 1
    instance = jnp.where(semantic >= 0, instance, 0)
    return semantic, instance


class PanopticQuality(Metric):
    """UViM's PQ, SQ, RQ in percent: `fsq_jax.eval.panoptic` (panopticapi's matching rules),
    every (class, instance id) pair a segment, crowd regions (`panoptic_crowd`) ignored.

    When the batch carries the native-resolution ground truth (`native_panoptic_*`,
    `native_shape`: `data.eval_native_shape`) each prediction is resized (nearest) to its
    image's original size and scored there, as big_vision's evaluators/proj/uvim/
    coco_panoptic.py; otherwise at the model's resolution. Keys whose class subset is empty
    (e.g. `pq_things` with no thing segment) are left out rather than reported as NaN, so
    logged curves stay finite.
    """

    def __init__(self, num_classes: int, thing_classes: tuple[int, ...]):
        self.num_classes = num_classes
        self._quality = eval_panoptic.PanopticQuality(thing_classes, segments_by_instance=True)

    def update(self, prediction: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]
               ) -> None:
        semantic = np.asarray(prediction["semantic"])
        instance = np.asarray(prediction["instance"])
        if NATIVE_PREFIX + "panoptic_semantic" in batch:
            self._update_native(semantic, instance, batch)
            return
        crowd = batch.get("panoptic_crowd")
        self._quality.update(np.asarray(batch["panoptic_semantic"]),
                             np.asarray(batch["panoptic_instance"]), semantic, instance,
                             gt_crowd=None if crowd is None else np.asarray(crowd, bool))

    def _update_native(self, semantic: np.ndarray, instance: np.ndarray,
                       batch: Mapping[str, np.ndarray]) -> None:
        shapes = np.asarray(batch[NATIVE_SHAPE_KEY])
        truth = {key: batch.get(NATIVE_PREFIX + key) for key in PANOPTIC_KEYS}
        for i, (height, width) in enumerate(shapes.tolist()):
            window = (0, 0, *semantic.shape[1:])
            gt = {key: None if value is None else np.asarray(value[i, :height, :width])[None]
                  for key, value in truth.items()}
            self._quality.update(
                gt["panoptic_semantic"], gt["panoptic_instance"],
                resize_nearest(semantic[i], window, (height, width))[None],
                resize_nearest(instance[i], window, (height, width))[None],
                gt_crowd=None if gt["panoptic_crowd"] is None else gt["panoptic_crowd"]
                .astype(bool))

    def result(self) -> dict[str, float]:
        return {key: 100.0 * value for key, value in self._quality.result().items()
                if not math.isnan(value)}


class PanopticOutput(DenseOutput):
    """Panoptic: targets = one-hot semantic (+void) and canonical segment slot; loss = CE."""

    name = NAME

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.num_classes = int(config.num_classes)
        self.max_instances = int(config.max_instances)
        self.thing_classes = tuple(int(c) for c in config.thing_classes)

    def target_channels(self) -> dict[str, int]:
        return {"semantic": self.num_classes + 1, "instance": self.max_instances}

    def _encoded(self, batch: Batch) -> jax.Array:
        return encode_panoptic(batch["panoptic_semantic"], batch["panoptic_instance"],
                               self.max_instances)

    def targets(self, batch: Batch) -> dict[str, jax.Array]:
        encoded = self._encoded(batch)
        return {"semantic": jax.nn.one_hot(encoded[..., 0], self.num_classes + 1),
                "instance": jax.nn.one_hot(encoded[..., 1], self.max_instances)}

    def loss(self, logits: Mapping[str, jax.Array], batch: Batch
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        # big_vision panoptic_task.py loss_fn: softmax cross-entropy against the one-hot
        # targets, averaged over all pixels; a segment beyond the slots has an all-zero target.
        encoded = self._encoded(batch)
        slot = encoded[..., 1]
        semantic = jnp.mean(softmax_cross_entropy(logits["semantic"], encoded[..., 0]))
        per_pixel = softmax_cross_entropy(logits["instance"],
                                          jnp.minimum(slot, self.max_instances - 1))
        instance = jnp.mean(jnp.where(slot < self.max_instances, per_pixel, 0.0))
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
