"""The input pipeline: config -> random-access source -> grain (shuffle, repeat, map, batch).

Every source is random access, so with grain's MapDataset a batch is a pure function of
(seed, split, step): resuming at `start_step` continues the exact stream, and each host of a
multi-host run reads its own disjoint slice of every global batch.

Evaluation reads a split differently (`evaluation=True`): one pass in order, no shuffling and no
augmentation even for the train split, the last global batch padded to full size with a boolean
`mask` marking the real examples, so every example is scored exactly once on any host count.
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
# Evaluation batches carry this bool [local batch] entry: True for real examples, False for the
# padding that fills the last global batch.
MASK_KEY = "mask"
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
        return tfds_sources.TfdsSource(argument, split, _field(config, "tfds_data_dir"),
                                       skip=_field(config, "train_skip") if split == "train" else 0)
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


def evaluation_mask(step: int, batch_size: int, num_examples: int, process_index: int = 0,
                    process_count: int = 1) -> np.ndarray:
    """bool `[batch_size // process_count]`: which rows of host `process_index`'s slice of global
    evaluation batch `step` are real, i.e. sit at a split position below `num_examples`."""
    local = batch_size // process_count
    start = step * batch_size + process_index * local
    return np.arange(start, start + local) < num_examples


class EvaluationStream:
    """The batches of one evaluation pass; `num_examples` real examples over all hosts, in
    `num_batches` global batches (so a caller knows the work ahead, e.g. for an ETA; None when a
    stand-in data function does not say)."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], num_examples: int | None,
                 num_batches: int | None):
        self._batches = batches
        self.num_examples, self.num_batches = num_examples, num_batches

    def __iter__(self) -> EvaluationStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._batches)


class _PaddedSource:
    """The first `num_examples` of `source`, then copies of the last of them up to `length`:
    padding rows are valid inputs (any model runs on them) that the mask then hides."""

    def __init__(self, source: Any, num_examples: int, length: int):
        self.source, self.num_examples, self.length = source, num_examples, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.source[min(int(index), self.num_examples - 1)]


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
    evaluation: bool = False,
    num_examples: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Host-local numpy batches of `split`: dicts of [batch_size // process_count, ...] arrays.

    The global batch at step s holds the examples at positions s * batch_size ... of the (shuffled,
    repeated) stream; host p gets its contiguous slice p of it, so hosts read disjoint examples and
    their batches concatenated in process order are the single-host batch. A batch depends only on
    (seed, split, step): `start_step=k` yields exactly what a fresh run yields from step k on.

    `shuffle` defaults to `data_config.shuffle` for the train split and False otherwise;
    `num_epochs=None` repeats forever, an integer stops after that many passes. A final partial
    global batch is dropped, so every batch has the same shape on every host.

    `evaluation=True` reads the split for scoring instead (see `batches`): once, in order,
    without augmentation (the evaluation crop `eval_crop_mode`, no flips, train split
    included), the first `num_examples` only when given, the last global batch padded and
    marked in `batch["mask"]`. It returns an `EvaluationStream`.
    """
    _check_stream_args(batch_size, start_step, process_index, process_count, num_epochs)
    source = open_source(data_config, split)
    preprocess_fn = None
    kind, _ = _source_kind(data_config)
    if kind != "scenes":
        augment = split in TRAIN_SPLITS and not evaluation
        size = _field(data_config, "image_size")
        mode = _field(data_config, "crop")
        if not augment:  # evaluation crops are deterministic (data.eval_crop)
            mode = preprocess.eval_crop_mode(mode, _field(data_config, "eval_crop"))
        flip = bool(_field(data_config, "random_flip")) and augment
        native = None if augment else (tuple(_field(data_config, "eval_native_shape")) or None)

        def preprocess_fn(example: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
            do_flip = flip and bool(rng.integers(2))
            return preprocess.square_resize(example, size, mode, do_flip, rng, native)

    return batches(source, data_config, split, batch_size, start_step=start_step,
                   process_index=process_index, process_count=process_count, shuffle=shuffle,
                   num_epochs=num_epochs, preprocess_fn=preprocess_fn, evaluation=evaluation,
                   num_examples=num_examples)


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
    evaluation: bool = False,
    num_examples: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """`build`'s stream over any random-access `source` (len, __getitem__ -> dict of arrays).

    Same order, sharding over hosts and resumption as `build` (it is `build`'s second half), so
    other example stores (e.g. a token cache) follow the data config's seed and shuffle.
    `preprocess_fn(example, np_rng) -> example` runs per example with a seeded generator.

    `evaluation=True`: one pass over the first `num_examples` (default: all) of `source` in
    order, never shuffled, in ceil(n / batch_size) global batches; the last one is filled up with
    copies of the last example, and every batch has `mask` (bool [local batch]) True exactly at
    the real examples. Host p gets the p-th slice of every global batch, so hosts see disjoint
    examples and, together, each of them once. Returns an `EvaluationStream`.
    """
    _check_stream_args(batch_size, start_step, process_index, process_count, num_epochs)
    if evaluation:
        return _evaluation_batches(source, data_config, split, batch_size, start_step,
                                   process_index, process_count, shuffle, num_epochs,
                                   preprocess_fn, num_examples)
    if num_examples is not None:
        raise ValueError("build: num_examples is only for evaluation=True (a training stream "
                         "is bounded by num_epochs)")
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
    return _read(dataset, data_config)


def _evaluation_batches(source: Any, data_config: Any, split: str, batch_size: int,
                        start_step: int, process_index: int, process_count: int,
                        shuffle: bool | None, num_epochs: int | None, preprocess_fn: Any,
                        num_examples: int | None) -> EvaluationStream:
    """`batches(..., evaluation=True)`."""
    if shuffle or num_epochs is not None:
        raise ValueError(f"build: evaluation reads the split once in order; got shuffle={shuffle}"
                         f", num_epochs={num_epochs}")
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"build: num_examples = {num_examples} must be >= 1 or None")
    total = len(source) if num_examples is None else min(num_examples, len(source))
    if total == 0:
        raise ValueError(f"build: split {split!r} has no examples to evaluate")
    steps = -(-total // batch_size)
    dataset = grain.MapDataset.source(_PaddedSource(source, total, steps * batch_size))
    if preprocess_fn is not None:  # without augmentation: the rng goes unused
        seed = _field(data_config, "seed")
        dataset = dataset.random_map(preprocess_fn, seed=_split_seed(seed, split, "evaluate"))
    dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
    dataset = dataset[process_index::process_count]
    dataset = dataset.map_with_index(lambda step, batch: {
        **batch, MASK_KEY: evaluation_mask(step, batch_size, total, process_index,
                                           process_count)})
    dataset = dataset[start_step:]
    return EvaluationStream(_read(dataset, data_config), total, steps)


def _read(dataset: grain.MapDataset, data_config: Any) -> Iterator[dict[str, np.ndarray]]:
    """Iterates `dataset`: with `read_threads` threads prefetching, or in the calling thread."""
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
