"""The input pipeline: config -> random-access source -> grain (shuffle, repeat, map, batch).

Every source is random access, so with grain's MapDataset a batch is a pure function of
(seed, split, step): resuming at `start_step` continues the exact stream, and each host of a
multi-host run reads its own disjoint slice of every global batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import grain
import ml_collections
import numpy as np

from fsq_jax import config_lib
from fsq_jax.data import folder, preprocess, scenes, tfds_sources

TRAIN_SPLITS = ("train",)
_DEFAULTS = config_lib.DataConfig()


def default_config() -> ml_collections.ConfigDict:
    """The `data` section with its defaults (`fsq_jax.config_lib.DataConfig`)."""
    return config_lib.data()


def _field(config: Any, key: str) -> Any:
    if isinstance(config, config_lib.DataConfig):
        return getattr(config, key)
    return config[key] if key in config else getattr(_DEFAULTS, key)


def validate_config(config: Any) -> None:
    """Raises ValueError naming the first bad `data.*` field (missing fields take defaults; a
    checked `DataConfig` is valid by construction)."""
    if not isinstance(config, config_lib.DataConfig):
        config_lib.check({**config_lib.data(), **dict(config)}, config_lib.DataConfig, "data")


def _source_kind(config: Any) -> tuple[str, str]:
    source = _field(config, "source")
    if source == "scenes":
        return "scenes", ""
    kind, _, argument = source.partition(":")
    return kind, argument


def open_source(config: Any, split: str) -> Any:
    """The random-access source (len, __getitem__) of `split` for `config.source`.

    Scenes are final examples; tfds and folder examples still need `preprocess.square_resize`.
    """
    validate_config(config)
    kind, argument = _source_kind(config)
    if kind == "scenes":
        if split not in scenes.SPLITS:
            raise ValueError(f"scenes split {split!r}: must be one of {', '.join(scenes.SPLITS)}")
        return scenes.SceneSource(
            split,
            _field(config, "train_size" if split == "train" else "eval_size"),
            _field(config, "image_size"),
            _field(config, "seed"),
            min_objects=_field(config, "min_objects"),
            max_objects=_field(config, "max_objects"),
        )
    if kind == "tfds":
        return tfds_sources.TfdsSource(argument, split, _field(config, "tfds_data_dir"))
    return folder.FolderSource(argument, split, _field(config, "on_corrupt"),
                               _field(config, "max_pixels"), _field(config, "folder_holdout"))


def num_examples(config: Any, split: str) -> int:
    """Examples in one pass over `split` (the nominal size for scenes)."""
    return len(open_source(config, split))


def num_classes(config: Any) -> int:
    """Number of `label` values (1 for sources without labels, whose label is always 0)."""
    validate_config(config)
    kind, argument = _source_kind(config)
    if kind == "scenes":
        return scenes.NUM_CLASSES
    if kind == "tfds":
        return tfds_sources.label_classes(argument, _field(config, "tfds_data_dir"))
    return len(folder.class_names(argument))


def panoptic_classes(config: Any) -> tfds_sources.PanopticClasses:
    """Semantic classes (names, thing or stuff) of a panoptic source; void is -1."""
    validate_config(config)
    kind, argument = _source_kind(config)
    if kind == "scenes":
        return tfds_sources.PanopticClasses(scenes.SEMANTIC_NAMES, scenes.IS_THING)
    if kind == "tfds" and tfds_sources.kind(argument) == "panoptic":
        return tfds_sources.COCO_PANOPTIC_CLASSES
    raise ValueError(f"data.source = {config.source!r} has no panoptic annotations; use 'scenes' "
                     "or 'tfds:coco/2017_panoptic'")


def _split_seed(seed: int, split: str, purpose: str) -> int:
    """A 32-bit seed for one (seed, split, purpose): independent streams, stable across runs."""
    return zlib.crc32(f"{seed}/{split}/{purpose}".encode()) & 0x7FFFFFFF


def _check_stream_args(batch_size: int, start_step: int, process_index: int,
                       process_count: int, num_epochs: int | None) -> None:
    if batch_size < 1 or process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"build: need batch_size >= 1 and 0 <= process_index ({process_index}) < "
            f"process_count ({process_count}); got batch_size={batch_size}"
        )
    if batch_size % process_count:
        raise ValueError(f"build: batch_size {batch_size} is not divisible by process_count "
                         f"{process_count}")
    if start_step < 0:
        raise ValueError(f"build: start_step = {start_step} must be >= 0")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"build: num_epochs = {num_epochs} must be >= 1 or None")


def build(
    data_config: Any,
    split: str,
    batch_size: int,
    *,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Host-local numpy batches of `split`: dicts of [batch_size // process_count, ...] arrays.

    The global batch at step s holds the examples at positions s * batch_size ... of the (shuffled,
    repeated) stream; host p gets its contiguous slice p of it, so hosts read disjoint examples and
    their batches concatenated in process order are the single-host batch. A batch depends only on
    (seed, split, step): `start_step=k` yields exactly what a fresh run yields from step k on.

    `shuffle` defaults to `data_config.shuffle` for the train split and False otherwise;
    `num_epochs=None` repeats forever, an integer stops after that many passes. A final partial
    global batch is dropped, so every batch has the same shape on every host.
    """
    _check_stream_args(batch_size, start_step, process_index, process_count, num_epochs)
    source = open_source(data_config, split)
    preprocess_fn = None
    kind, _ = _source_kind(data_config)
    if kind != "scenes":
        is_train = split in TRAIN_SPLITS
        size = _field(data_config, "image_size")
        mode = _field(data_config, "crop")
        if mode == "random" and not is_train:
            mode = "center"
        flip = bool(_field(data_config, "random_flip")) and is_train

        def preprocess_fn(example: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
            do_flip = flip and bool(rng.integers(2))
            return preprocess.square_resize(example, size, mode, do_flip, rng)

    return batches(source, data_config, split, batch_size, start_step=start_step,
                   process_index=process_index, process_count=process_count, shuffle=shuffle,
                   num_epochs=num_epochs, preprocess_fn=preprocess_fn)


def batches(
    source: Any,
    data_config: Any,
    split: str,
    batch_size: int,
    *,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
    preprocess_fn: Any = None,
) -> Iterator[dict[str, np.ndarray]]:
    """`build`'s stream over any random-access `source` (len, __getitem__ -> dict of arrays).

    Same order, sharding over hosts and resumption as `build` (it is `build`'s second half), so
    other example stores (e.g. a token cache) follow the data config's seed and shuffle.
    `preprocess_fn(example, np_rng) -> example` runs per example with a seeded generator.
    """
    _check_stream_args(batch_size, start_step, process_index, process_count, num_epochs)
    if shuffle is None:
        shuffle = bool(_field(data_config, "shuffle")) and split in TRAIN_SPLITS
    seed = _field(data_config, "seed")
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=_split_seed(seed, split, "shuffle"))
    dataset = dataset.repeat(num_epochs)
    if preprocess_fn is not None:
        dataset = dataset.random_map(preprocess_fn, seed=_split_seed(seed, split, "augment"))
    host_batch = batch_size // process_count
    dataset = dataset.batch(host_batch, drop_remainder=True)
    if num_epochs is not None:
        global_steps = len(source) * num_epochs // batch_size
        if global_steps == 0:
            raise ValueError(f"build: split {split!r} has {len(source)} examples, fewer than one "
                             f"batch of {batch_size} in {num_epochs} epoch(s)")
        dataset = dataset[: global_steps * process_count]
    dataset = dataset[process_index::process_count]
    dataset = dataset[start_step:]
    threads = _field(data_config, "read_threads")
    if threads == 0:
        return _iterate(dataset)
    options = grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=max(_field(data_config, "prefetch_batches"), 1)
    )
    return iter(dataset.to_iter_dataset(options))


def _iterate(dataset: grain.MapDataset) -> Iterator[dict[str, np.ndarray]]:
    """Reads `dataset` in order in the calling thread (no prefetching)."""
    for step in range(len(dataset)):
        yield dataset[step]
