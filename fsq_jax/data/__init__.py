"""Input data for every task: procedural scenes (the default), TFDS datasets and image folders.

`build(config.data, split, batch_size, ...)` yields host-local numpy batches with the keys of
docs/architecture.md (`image`, `label`, `depth`, `panoptic_semantic`, `panoptic_instance`, `gray`;
each source provides the keys it has), deterministic in (seed, split, step) and shardable per host.
"""

from fsq_jax.data import folder, preprocess, scenes, tfds_sources
from fsq_jax.data.errors import DataError
from fsq_jax.data.folder import CorruptImageError, FolderSource
from fsq_jax.data.pipeline import (
    MASK_KEY,
    EvaluationStream,
    batches,
    build,
    default_config,
    evaluation_mask,
    num_classes,
    num_examples,
    open_source,
    panoptic_classes,
    validate_config,
)
from fsq_jax.data.scenes import SceneSource, render_scene
from fsq_jax.data.tfds_sources import VOID, DatasetNotPreparedError, PanopticClasses, TfdsSource

__all__ = [
    "MASK_KEY",
    "VOID",
    "CorruptImageError",
    "DataError",
    "DatasetNotPreparedError",
    "EvaluationStream",
    "FolderSource",
    "PanopticClasses",
    "SceneSource",
    "TfdsSource",
    "batches",
    "build",
    "default_config",
    "evaluation_mask",
    "folder",
    "num_classes",
    "num_examples",
    "open_source",
    "panoptic_classes",
    "preprocess",
    "render_scene",
    "scenes",
    "tfds_sources",
    "validate_config",
]
