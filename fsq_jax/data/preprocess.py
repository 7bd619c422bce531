"""Per-example preprocessing of decoded images and dense targets: crop, resize, flip.

Real datasets come in any size and aspect ratio; models want square `image_size` inputs. Images are
resampled with an antialiasing bicubic filter; dense targets (depth, panoptic ids) with nearest
neighbour, so no depth is invented between a surface and an invalid (0) pixel and ids stay ids.
Evaluation examples can also keep their dense maps at native resolution (`native_shape`), for
protocols that score there (UViM's NYU depth and COCO panoptic evaluators).
"""

from __future__ import annotations

import math
import typing

import numpy as np
from PIL import Image

from fsq_jax.config_lib.sections import CropMode, EvalCropMode
from fsq_jax.data.scenes import luminance

CROP_MODES = (*typing.get_args(CropMode), "nyu_eval_crop")
EVAL_CROP_MODES = typing.get_args(EvalCropMode)
# Keys holding [H, W, ...] maps that must be cropped, resized and flipped with the image.
DENSE_KEYS = ("depth", "panoptic_semantic", "panoptic_instance", "panoptic_crowd")
# What a native map holds outside its image: invalid depth, void, no instance, no crowd.
NATIVE_FILL = {"depth": 0.0, "panoptic_semantic": -1, "panoptic_instance": 0,
               "panoptic_crowd": False}
NATIVE_PREFIX = "native_"
NATIVE_SHAPE_KEY = "native_shape"
# big_vision pp/proj/uvim/pp_ops.py `nyu_eval_crop`: (top, left, height, width) of 480x640 NYU
# frames. Its code starts at row 54 (rows 54..479); its comment says slice(45, 471), the Eigen
# crop; we follow the code, which produced UViM's numbers.
NYU_FRAME = (480, 640)
NYU_EVAL_WINDOW = (54, 41, 426, 560)
# big_vision pp `inception_box` (tf.image.sample_distorted_bounding_box): area and w/h ranges.
INCEPTION_AREA = (0.05, 1.0)
INCEPTION_ASPECT = (0.75, 1.33)
INCEPTION_ATTEMPTS = 100


def _try_inception_box(height: int, width: int, aspect: float, rng: np.random.Generator
                       ) -> tuple[int, int, int, int] | None:
    """One draw of TensorFlow's `sample_distorted_bounding_box` for width/height ratio `aspect`
    (its GenerateRandomCrop): a uniform height between the area bounds, or None when none fits."""
    min_area, max_area = (fraction * height * width for fraction in INCEPTION_AREA)
    crop_height = int(np.rint(math.sqrt(min_area / aspect)))
    max_height = int(np.rint(math.sqrt(max_area / aspect)))
    if np.rint(max_height * aspect) > width:  # the tallest box whose rounded width fits
        max_height = int((width + 0.5 - 1e-7) / aspect)
        if np.rint(max_height * aspect) > width:
            max_height -= 1
    max_height = min(max_height, height)
    crop_height = min(crop_height, max_height)
    if crop_height < max_height:
        crop_height += int(rng.integers(0, max_height - crop_height + 1))
    crop_width = int(np.rint(crop_height * aspect))
    if crop_width * crop_height < min_area:
        crop_height += 1
        crop_width = int(np.rint(crop_height * aspect))
    if crop_width * crop_height > max_area:
        crop_height -= 1
        crop_width = int(np.rint(crop_height * aspect))
    area = crop_width * crop_height
    if not (min_area <= area <= max_area and 0 < crop_width <= width
            and 0 < crop_height <= height):
        return None
    # TensorFlow draws offsets in [0, size - crop) (the last offset is never drawn).
    top = int(rng.integers(0, height - crop_height)) if crop_height < height else 0
    left = int(rng.integers(0, width - crop_width)) if crop_width < width else 0
    return top, left, crop_height, crop_width


def inception_window(height: int, width: int, rng: np.random.Generator
                     ) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of an Inception-style random box.

    As big_vision's `inception_box` (tf.image.sample_distorted_bounding_box with
    area_range=(0.05, 1), aspect_ratio_range=(0.75, 1.33), no object boxes): up to 100 draws of
    a uniform aspect ratio, each a uniform height within the area bounds and a uniform offset;
    the whole image when no draw fits.
    """
    for _ in range(INCEPTION_ATTEMPTS):
        aspect = float(rng.uniform(*INCEPTION_ASPECT))
        window = _try_inception_box(height, width, aspect, rng)
        if window is not None:
            return window
    return 0, 0, height, width


def crop_window(
    height: int, width: int, mode: str, rng: np.random.Generator | None = None
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of the region that becomes the square output.

    `center`: the largest centred square; `random`: the largest square at a random offset along the
    longer side (needs `rng`); `resize`: the whole image (the aspect ratio is not preserved);
    `inception`: `inception_window` (needs `rng`; stretched to the square); `nyu_eval_crop`:
    big_vision's NYU evaluation window `NYU_EVAL_WINDOW` of a 480x640 frame.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot crop an empty image of size {height}x{width}")
    if mode == "resize":
        return 0, 0, height, width
    if mode == "nyu_eval_crop":
        if (height, width) != NYU_FRAME:
            raise ValueError(f"crop mode 'nyu_eval_crop' needs a 480x640 NYU frame, got "
                             f"{height}x{width}")
        return NYU_EVAL_WINDOW
    if mode == "inception":
        if rng is None:
            raise ValueError("crop mode 'inception' needs an rng")
        return inception_window(height, width, rng)
    side = min(height, width)
    if mode == "center":
        return (height - side) // 2, (width - side) // 2, side, side
    if mode == "random":
        if rng is None:
            raise ValueError("crop mode 'random' needs an rng")
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        return top, left, side, side
    raise ValueError(f"crop mode {mode!r}: must be one of {', '.join(CROP_MODES)}")


def resize_image(image: np.ndarray, window: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crops `window` of uint8 `image` [H, W, 3], resizes it to uint8 [size, size, 3] (bicubic)."""
    top, left, crop_height, crop_width = window
    if crop_height == size and crop_width == size:
        return np.ascontiguousarray(image[top : top + size, left : left + size])
    pil = Image.fromarray(image)
    box = (left, top, left + crop_width, top + crop_height)
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC, box=box))


def resize_nearest(
    array: np.ndarray, window: tuple[int, int, int, int], size: int | tuple[int, int]
) -> np.ndarray:
    """Crops `window` of a dense map [H, W, ...] and resizes it to [size, size, ...] (nearest).

    `size` may also be (height, width). Output pixel i takes the input pixel whose cell contains
    its centre, so values and dtype are kept exactly (depth stays metres, 0 stays invalid, ids stay
    ids).
    """
    top, left, crop_height, crop_width = window
    height, width = (size, size) if isinstance(size, int | np.integer) else size
    rows = top + ((np.arange(height) + 0.5) * crop_height / height).astype(np.int64)
    cols = left + ((np.arange(width) + 0.5) * crop_width / width).astype(np.int64)
    return array[rows[:, None], cols[None, :]]


def eval_crop_mode(crop: str, eval_crop: str) -> str:
    """The crop of the evaluation splits: `eval_crop`, or when it is "" the deterministic
    counterpart of `crop` ("random" -> "center", "inception" -> "resize", as UViM evaluates)."""
    if eval_crop not in EVAL_CROP_MODES:
        raise ValueError(f"eval crop mode {eval_crop!r}: must be one of "
                         f"{', '.join(map(repr, EVAL_CROP_MODES))}")
    if eval_crop:
        return eval_crop
    return {"random": "center", "inception": "resize"}.get(crop, crop)


def native_maps(example: dict[str, np.ndarray], window: tuple[int, int, int, int],
                shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The dense maps of `window` at native resolution, padded to `shape` with NATIVE_FILL.

    Returns `native_<key>` [shape[0], shape[1], ...] for every dense key of `example` and
    `native_shape` int32 [2] = (crop_height, crop_width), the part that holds data.
    """
    top, left, crop_height, crop_width = window
    if crop_height > shape[0] or crop_width > shape[1]:
        raise ValueError(f"the evaluation window {crop_height}x{crop_width} does not fit "
                         f"data.eval_native_shape {tuple(shape)}")
    out = {NATIVE_SHAPE_KEY: np.array([crop_height, crop_width], np.int32)}
    for key in DENSE_KEYS:
        if key in example:
            dense = np.asarray(example[key])
            padded = np.full((*shape, *dense.shape[2:]), NATIVE_FILL[key], dense.dtype)
            padded[:crop_height, :crop_width] = dense[top:top + crop_height,
                                                      left:left + crop_width]
            out[NATIVE_PREFIX + key] = padded
    return out


def square_resize(
    example: dict[str, np.ndarray],
    size: int,
    mode: str,
    flip: bool,
    rng: np.random.Generator | None = None,
    native_shape: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Crops (per `mode`), resizes to `size` and optionally flips an example; adds `gray`.

    `example` holds `image` uint8 [H, W, 3] and optionally dense maps [H, W] under DENSE_KEYS (same
    H, W) and a scalar `label`. The same window and flip apply to every map. With
    `native_shape` (evaluation only, no flip) the output also holds `native_maps` of the window.
    """
    image = example["image"]
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    if flip and native_shape:
        raise ValueError("native-resolution maps are for evaluation examples, which are never "
                         "flipped")
    height, width = image.shape[:2]
    window = crop_window(height, width, mode, rng)
    out = {"image": resize_image(image, window, size)}
    for key in DENSE_KEYS:
        if key in example:
            dense = example[key]
            if dense.shape[:2] != (height, width):
                raise ValueError(
                    f"{key} has shape {dense.shape}, but the image is {height}x{width}"
                )
            out[key] = resize_nearest(dense, window, size)
    if flip:
        out = {key: np.ascontiguousarray(value[:, ::-1]) for key, value in out.items()}
    if native_shape:
        out.update(native_maps(example, window, tuple(native_shape)))
    out["gray"] = luminance(out["image"])
    if "label" in example:
        out["label"] = np.int32(example["label"])
    return out
