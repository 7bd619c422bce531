"""ColTran's FID-5k of colorizations, the number UViM and the FSQ paper report (Table 2).

ColTran (Kumar et al. 2021) colourises the first 5000 ImageNet validation images as TFDS reads
them by default (with shard interleaving, so not `validation[:5000]`) and compares their
Inception features at 256x256 with those of 5000 other validation images (its seed-1 block).
big_vision (evaluators/proj/uvim/coltran_fid.py) checks both sets against two file lists, which
ship here as data (`uvim/data/coltran_fid_{eval,reference}_file_names.txt`, Apache-2.0); we
select the images by those lists, so the sets do not depend on TFDS's read order.

Per image, as that evaluator: the largest centred square, area-resized to the model's input
size (512) and rounded; the model colourises the grayscale of it; the colourisation is
area-resized to 256 and quantised as ColTran stores it, round((y + 1) * 128) clipped to 255;
the reference images are the centred squares area-resized to 256 and rounded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fsq_jax.data.scenes import luminance

DATA_DIR = Path(__file__).parent / "data"
EVAL_FILES = DATA_DIR / "coltran_fid_eval_file_names.txt"
REFERENCE_FILES = DATA_DIR / "coltran_fid_reference_file_names.txt"
DATASET = "imagenet2012"
SPLIT = "validation"
FID_SIZE = 256  # ColTran scores at 256x256
NUM_IMAGES = 5000

# (state, batch {"image", "gray"}, rng, context) -> {"image": float [B, H, W, 3] in [-1, 1]}
PredictFn = Callable[[Any, Mapping[str, np.ndarray], jax.Array, Any], Mapping[str, np.ndarray]]


def read_file_names(path: str | Path) -> tuple[str, ...]:
    """The file names of a list, one per line, in order; ValueError naming the file when a
    name repeats or the list is empty."""
    names = tuple(line for line in Path(path).read_text().splitlines() if line)
    if not names:
        raise ValueError(f"{path}: the file list is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: file names repeat")
    return names


def central_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of [H, W, C] (tf.image.resize_with_crop_or_pad to the short
    side: offsets (H - side) // 2 and (W - side) // 2)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top:top + side, left:left + side]


@functools.lru_cache(maxsize=16)
def area_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of area resampling along one axis (TensorFlow's ResizeArea,
    align_corners=False): output pixel o averages the input interval [o s, (o + 1) s),
    s = in_size / out_size, each input pixel weighted by its overlap."""
    scale = in_size / out_size
    starts = np.arange(out_size)[:, None] * scale
    pixels = np.arange(in_size)[None, :]
    overlap = np.minimum(starts + scale, pixels + 1) - np.maximum(starts, pixels)
    return np.maximum(overlap, 0.0) / scale


def area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area resampling of [H, W, C] to float64 [size, size, C] (up or down)."""
    image = np.asarray(image, np.float64)
    rows = area_weights(image.shape[0], size)
    cols = area_weights(image.shape[1], size)
    resized_rows = np.tensordot(rows, image, axes=(1, 0))  # [size, W, C]
    return np.tensordot(resized_rows, cols, axes=(1, 1)).transpose(0, 2, 1)  # [size, size, C]


def coltran_image(image: np.ndarray, size: int) -> np.ndarray:
    """ColTran's preprocessing (coltran/datasets.py): centred square, area resize to `size`,
    rounded (half to even, as tf.round): uint8 [size, size, 3]."""
    return np.clip(np.rint(area_resize(central_square(image), size)), 0, 255).astype(np.uint8)


def quantize_colorization(prediction: np.ndarray) -> np.ndarray:
    """A colourisation in [-1, 1] [B, H, W, 3] -> uint8 [B, 256, 256, 3]: area-resized to 256,
    then round((y + 1) * 128) clipped to [0, 255], as ColTran serialises its samples."""
    resized = np.stack([area_resize(image, FID_SIZE) for image in np.asarray(prediction)])
    return np.clip(np.rint((resized + 1.0) * 128.0), 0, 255).astype(np.uint8)


class ColtranFidData:
    """The two ColTran image sets of a random-access ImageNet validation source.

    Args:
      records: random access (len, [i]) to records with `image` uint8 [H, W, 3].
      positions: `{file name: record index}` of the records.
      input_size: the model's input size (the colourised images' side).
      eval_files, reference_files: the file lists (default: the shipped ColTran lists).
    """

    def __init__(self, records: Any, positions: Mapping[str, int], input_size: int,
                 eval_files: str | Path = EVAL_FILES,
                 reference_files: str | Path = REFERENCE_FILES):
        self.records, self.input_size = records, input_size
        self.eval_names = read_file_names(eval_files)
        self.reference_names = read_file_names(reference_files)
        shared = set(self.eval_names) & set(self.reference_names)
        if shared:
            raise ValueError(f"the ColTran evaluation and reference lists share "
                             f"{len(shared)} files, e.g. {sorted(shared)[0]!r}")
        missing = [n for n in self.eval_names + self.reference_names if n not in positions]
        if missing:
            raise ValueError(f"{len(missing)} files of the ColTran lists are not in the "
                             f"source, e.g. {missing[0]!r}")
        self.eval_positions = [int(positions[n]) for n in self.eval_names]
        self.reference_positions = [int(positions[n]) for n in self.reference_names]

    @classmethod
    def from_tfds(cls, input_size: int, data_dir: str = "", **files: Any) -> ColtranFidData:
        """The sets of the prepared TFDS imagenet2012 validation split (file names are read
        once, without decoding the images)."""
        from fsq_jax.data import tfds_sources

        positions = tfds_sources.file_name_index(DATASET, SPLIT, data_dir)
        records = tfds_sources.open_source(DATASET, SPLIT, data_dir)
        return cls(records, positions, input_size, **files)

    def eval_batch(self, positions: Sequence[int]) -> dict[str, np.ndarray]:
        """Model inputs of the given records: `image` uint8 [B, S, S, 3] (S = input_size) and
        its `gray` [B, S, S, 1], as the data pipeline gives them."""
        images = np.stack([coltran_image(np.asarray(self.records[p]["image"]), self.input_size)
                           for p in positions])
        return {"image": images, "gray": luminance(images)}

    def reference_batch(self, positions: Sequence[int]) -> np.ndarray:
        """Reference images of the given records: uint8 [B, 256, 256, 3]."""
        return np.stack([coltran_image(np.asarray(self.records[p]["image"]), FID_SIZE)
                         for p in positions])


def _process_share(positions: Sequence[int], batch_size: int) -> Iterator[tuple[list[int], int]]:
    """This process's rows of each global batch, padded to an equal share on every process:
    (positions, number of real rows)."""
    count, index = jax.process_count(), jax.process_index()
    for start in range(0, len(positions), batch_size):
        batch = list(positions[start:start + batch_size])
        share = -(-len(batch) // count)
        rows = batch[index * share:(index + 1) * share]
        real = len(rows)
        yield rows + [batch[-1]] * (share - real), real


def _all_rows(features: np.ndarray) -> np.ndarray:
    """Every process's feature rows, in process order (this process's alone on one host)."""
    if jax.process_count() == 1:
        return features
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(features)
    return np.asarray(gathered).reshape(-1, features.shape[-1])


class ColtranFidEvaluator:
    """FID-5k of a model's colourisations (`fid`), ColTran's protocol (module docstring).

    Args:
      predict: `(state, batch, rng, context) -> {"image": [B, S, S, 3] in [-1, 1]}` for a
        process-local batch (`ColtranFidData.eval_batch`).
      data: the image sets, or a function making them on first use (TFDS is opened lazily).
      batch_size: global batch size of the colourisations.
      extractor: uint8 images [N, H, W, 3] -> features [N, D] (default: the FID InceptionV3).
      allow_singular: permit fewer images than feature dimensions (tests only).
    """

    name = "coltran_fid"

    def __init__(self, predict: PredictFn, data: ColtranFidData | Callable[[], ColtranFidData],
                 batch_size: int, extractor: Callable[[np.ndarray], np.ndarray] | None = None,
                 allow_singular: bool = False):
        self.predict, self.batch_size = predict, batch_size
        self._data, self._extractor = data, extractor
        self.allow_singular = allow_singular
        self._reference = None

    @property
    def data(self) -> ColtranFidData:
        if not isinstance(self._data, ColtranFidData):
            self._data = self._data()
        return self._data

    @property
    def extractor(self) -> Callable[[np.ndarray], np.ndarray]:
        if self._extractor is None:
            from fsq_jax.eval import inception

            self._extractor = inception.FeatureExtractor()
        return self._extractor

    def _features(self, batches: Iterator[tuple[np.ndarray, int]]) -> Any:
        """FeatureStats of every process's real rows of image batches (images, real rows)."""
        from fsq_jax.eval import fid

        stats = None
        for images, real in batches:
            features = np.asarray(self.extractor(images), np.float64)
            share = len(features)
            counts = _all_rows(np.array([[real]], np.int64))[:, 0]
            rows = _all_rows(features).reshape(len(counts), share, -1)
            features = np.concatenate([rows[p, :n] for p, n in enumerate(counts)])
            stats = fid.FeatureStats(features.shape[1]) if stats is None else stats
            stats.update(features)
        return stats

    def reference_stats(self) -> Any:
        """Statistics of the reference set (computed once per evaluator)."""
        if self._reference is None:
            data = self.data
            batches = ((data.reference_batch(rows), real) for rows, real in
                       _process_share(data.reference_positions, self.batch_size))
            self._reference = self._features(batches)
        return self._reference

    def run(self, state: Any, context: Any) -> Iterator[tuple[str, float]]:
        from fsq_jax.eval import fid

        data = self.data

        def colourised() -> Iterator[tuple[np.ndarray, int]]:
            shares = _process_share(data.eval_positions, self.batch_size)
            for index, (rows, real) in enumerate(shares):
                prediction = self.predict(state, data.eval_batch(rows), context.batch_rng(index),
                                          context)
                yield quantize_colorization(prediction["image"]), real

        stats = self._features(colourised())
        yield "fid", fid.fid_from_stats(stats, self.reference_stats(),
                                        allow_singular=self.allow_singular)
