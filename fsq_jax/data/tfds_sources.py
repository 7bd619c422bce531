"""TFDS sources through `tfds.data_source`: ImageNet, NYU Depth v2, COCO panoptic, any image set.

Each record becomes an example with the project's keys before preprocessing: `image` uint8
[H, W, 3] and `label` int32 (0 where a dataset has no labels), plus `depth` float32 [H, W] (metres,
0 where invalid) for nyu_depth_v2, or `panoptic_semantic` / `panoptic_instance` int32 [H, W] for
coco/*panoptic. A dataset that is not prepared fails with a message saying how to prepare it,
instead of TFDS starting a download or raising from deep inside.

COCO panoptic decoding: the panoptic PNG encodes a segment id per pixel as R + 256 G + 256^2 B; a
segment's class is its `panoptic_objects/label` (contiguous 0..132: the 80 thing classes first, then
the 53 stuff classes). A panoptic map whose size differs from the image's is resampled (nearest) to
the image grid. Things get instance ids 1, 2, ... in segment order; stuff gets instance 0;
pixels of no segment (id 0, or an id without annotation) are void: semantic `VOID` = -1, instance 0.
Crowd segments keep their class but get instance 0 (they are not countable instances), and their
pixels are marked in `panoptic_crowd` (bool [H, W]), which panoptic quality ignores as panopticapi
does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from etils import epath

from fsq_jax.data.preprocess import resize_nearest

VOID = -1
NYU_NAME = "nyu_depth_v2"

# COCO panoptic 2017 categories in id order: 80 things, then 53 stuff (what TFDS labels 0..132).
COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
COCO_STUFF = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood",
    "flower", "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform",
    "playingfield", "railroad", "river", "road", "roof", "sand", "sea", "shelf", "snow", "stairs",
    "tent", "towel", "wall-brick", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged",
    "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged",
    "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged",
)


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not available in the data directory (with how to prepare it)."""


@dataclasses.dataclass(frozen=True)
class PanopticClasses:
    """Semantic classes of a panoptic source: `names[i]` and `is_thing[i]` for semantic id i.

    Semantic id `void` (-1) marks unlabelled pixels; evaluators ignore them.
    """

    names: tuple[str, ...]
    is_thing: tuple[bool, ...]
    void: int = VOID

    def __post_init__(self):
        if len(self.names) != len(self.is_thing):
            raise ValueError("PanopticClasses: names and is_thing differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(i for i, thing in enumerate(self.is_thing) if thing)

    @property
    def stuff_ids(self) -> tuple[int, ...]:
        return tuple(i for i, thing in enumerate(self.is_thing) if not thing)


COCO_PANOPTIC_CLASSES = PanopticClasses(
    names=COCO_THINGS + COCO_STUFF,
    is_thing=(True,) * len(COCO_THINGS) + (False,) * len(COCO_STUFF),
)


def kind(name: str) -> str:
    """How records of TFDS dataset `name` map to examples: "panoptic", "depth" or "image"."""
    base = name.split(":")[0]
    if base.startswith("coco/") and base.endswith("panoptic"):
        return "panoptic"
    if base.split("/")[0] == NYU_NAME:
        return "depth"
    return "image"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _prepare_hint(name: str, data_dir: str) -> str:
    where = f" --data_dir={data_dir}" if data_dir else ""
    base = name.split("/")[0].split(":")[0]
    hint = f"prepare it with `tfds build {name}{where} --file_format=array_record`"
    if base == "imagenet2012":
        hint += (
            " after downloading ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
            "image-net.org into the manual directory (default <data_dir>/downloads/manual; "
            "`--manual_dir=DIR` to choose)"
        )
    elif name.startswith("coco/"):
        hint += " (downloads about 20 GB of images and panoptic annotations)"
    return hint


def open_source(name: str, split: str, data_dir: str = "", decoders: Any = None) -> Any:
    """`tfds.data_source(name, split)` (random access), or DatasetNotPreparedError saying why.

    Never downloads: a dataset must have been prepared (in array_record format) beforehand.
    `decoders` are TFDS feature decoders (e.g. `tfds.decode.SkipDecoding()` for the images).
    """
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(data_dir) if data_dir else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # an unknown name, a bad version, a broken import in TFDS
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} is unknown or cannot be loaded ({_first_line(e)}); check "
            "the name against `tfds.list_builders()` or the TFDS catalog"
        ) from None
    try:
        return builder.as_data_source(split=split, decoders=decoders)
    except Exception as e:
        reason = _first_line(e)
    location = builder.data_dir
    if not (epath.Path(location) / "dataset_info.json").exists():
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} is not prepared: nothing in {location}; "
            f"{_prepare_hint(name, data_dir or '')}"
        ) from None
    splits = list(builder.info.splits)
    if splits and split.split("[")[0] not in splits:
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} has no split {split!r} (it has {', '.join(splits)})"
        ) from None
    if "file format" in reason.lower() or "array_record" in reason.lower():
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} in {location} is not in a random-access format ({reason}); "
            f"{_prepare_hint(name, data_dir or '')}"
        ) from None
    raise DatasetNotPreparedError(
        f"TFDS dataset {name!r} split {split!r} cannot be opened from {location}: {reason}"
    ) from None


def label_classes(name: str, data_dir: str = "") -> int:
    """Number of classes of the `label` feature of TFDS dataset `name` (1 if it has none)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=os.path.expanduser(data_dir) if data_dir else None)
    except Exception as e:
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} is unknown or cannot be loaded ({_first_line(e)})"
        ) from None
    features = builder.info.features
    if "label" not in features:
        return 1
    return int(getattr(features["label"], "num_classes", 0) or 1)


def decode_panoptic(
    panoptic_image: np.ndarray,
    segment_ids: np.ndarray,
    segment_labels: np.ndarray,
    segment_is_crowd: np.ndarray | None = None,
    is_thing: tuple[bool, ...] = COCO_PANOPTIC_CLASSES.is_thing,
) -> tuple[np.ndarray, np.ndarray]:
    """Semantic and instance maps (int32 [H, W]) from a COCO panoptic PNG [H, W, 3] uint8.

    segment_ids [n], segment_labels [n] (contiguous class ids) and segment_is_crowd [n] describe the
    segments. Unannotated pixels get semantic VOID and instance 0; stuff and crowd get instance 0.
    """
    semantic, instance, _ = decode_panoptic_with_crowd(
        panoptic_image, segment_ids, segment_labels, segment_is_crowd, is_thing)
    return semantic, instance


def decode_panoptic_with_crowd(
    panoptic_image: np.ndarray,
    segment_ids: np.ndarray,
    segment_labels: np.ndarray,
    segment_is_crowd: np.ndarray | None = None,
    is_thing: tuple[bool, ...] = COCO_PANOPTIC_CLASSES.is_thing,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`decode_panoptic`'s semantic and instance maps and the crowd map (bool [H, W], True on
    the pixels of segments with `is_crowd`)."""
    if panoptic_image.ndim != 3 or panoptic_image.shape[-1] != 3:
        raise ValueError(f"panoptic image must be [H, W, 3], got {panoptic_image.shape}")
    rgb = panoptic_image.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    count = min(len(segment_ids), len(segment_labels))
    if segment_is_crowd is not None:
        count = min(count, len(segment_is_crowd))
    semantic = np.full(ids.shape, VOID, dtype=np.int32)
    instance = np.zeros(ids.shape, dtype=np.int32)
    crowd_map = np.zeros(ids.shape, dtype=bool)
    if count == 0:
        return semantic, instance, crowd_map
    seg_ids = np.asarray(segment_ids[:count], dtype=np.int64)
    seg_labels = np.asarray(segment_labels[:count], dtype=np.int64)
    crowd = (np.zeros(count, dtype=bool) if segment_is_crowd is None
             else np.asarray(segment_is_crowd[:count], dtype=bool))
    if seg_labels.min() < 0 or seg_labels.max() >= len(is_thing):
        raise ValueError(f"panoptic segment labels out of range [0, {len(is_thing)})")
    thing = np.asarray(is_thing)[seg_labels] & ~crowd
    instance_of_segment = np.where(thing, np.cumsum(thing), 0).astype(np.int32)
    # Map pixel ids to segment positions; 0 is never a segment id in COCO panoptic PNGs.
    order = np.argsort(seg_ids, kind="stable")
    sorted_ids = seg_ids[order]
    position = np.clip(np.searchsorted(sorted_ids, ids), 0, count - 1)
    found = (sorted_ids[position] == ids) & (ids != 0)
    segment = order[position]
    semantic[found] = seg_labels[segment[found]]
    instance[found] = instance_of_segment[segment[found]]
    crowd_map[found] = crowd[segment[found]]
    return semantic, instance, crowd_map


def to_example(record: dict[str, Any], dataset_kind: str) -> dict[str, np.ndarray]:
    """A decoded TFDS record as an example with the project's keys (before resizing)."""
    if "image" not in record:
        raise ValueError(f"TFDS record has no 'image' feature (it has "
                         f"{', '.join(sorted(record))}); image sources need one")
    image = np.asarray(record["image"])
    if image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"TFDS image has shape {image.shape}; expected [H, W, 3] or [H, W, 1]")
    example = {
        "image": image.astype(np.uint8, copy=False),
        "label": np.int32(record["label"]) if "label" in record else np.int32(0),
    }
    if dataset_kind == "depth":
        depth = np.asarray(record["depth"], dtype=np.float32)
        example["depth"] = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    elif dataset_kind == "panoptic":
        objects = record["panoptic_objects"]
        maps = decode_panoptic_with_crowd(
            np.asarray(record["panoptic_image"]),
            np.asarray(objects["id"]),
            np.asarray(objects["label"]),
            np.asarray(objects["is_crowd"]) if "is_crowd" in objects else None,
        )
        if maps[0].shape != image.shape[:2]:  # never in COCO; resample to the image grid
            window = (0, 0, *maps[0].shape)
            maps = tuple(resize_nearest(m, window, image.shape[:2]) for m in maps)
        for key, value in zip(("panoptic_semantic", "panoptic_instance", "panoptic_crowd"), maps):
            example[key] = value
    return example


class TfdsSource:
    """Random-access source of examples (project keys, original size) from a TFDS dataset split.

    `skip` holds out the split's first examples: example i is record `skip + i`, the records of
    the TFDS split spec `f"{split}[{skip}:]"` (UViM trains on "train[4096:]").
    """

    def __init__(self, name: str, split: str, data_dir: str = "", skip: int = 0):
        self.name, self.split, self.skip = name, split, int(skip)
        self.kind = kind(name)
        self._source = open_source(name, split, data_dir)
        if not 0 <= self.skip < len(self._source):
            raise ValueError(f"data.train_skip = {skip}: the {name!r} split {split!r} has "
                             f"{len(self._source)} examples")

    def __len__(self) -> int:
        return len(self._source) - self.skip

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return to_example(self._source[self.skip + int(index)], self.kind)

    def __repr__(self) -> str:
        held_out = f", skip={self.skip}" if self.skip else ""
        return f"TfdsSource({self.name!r}, split={self.split!r}{held_out}, examples={len(self)})"


def file_name_index(name: str, split: str, data_dir: str = "",
                    feature: str = "file_name") -> dict[str, int]:
    """`{file name: record index}` of a TFDS split whose records have a `feature` text field
    (imagenet2012's `file_name`), read without decoding the images."""
    import tensorflow_datasets as tfds

    source = open_source(name, split, data_dir,
                         decoders={"image": tfds.decode.SkipDecoding()})
    index = {}
    for position in range(len(source)):
        record = source[position]
        if feature not in record:
            raise ValueError(f"TFDS dataset {name!r} has no {feature!r} feature (it has "
                             f"{', '.join(sorted(record))})")
        value = record[feature]
        index[value.decode() if isinstance(value, bytes) else str(value)] = position
    return index
