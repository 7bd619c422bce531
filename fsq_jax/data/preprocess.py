"""Per-example preprocessing of decoded images and dense targets: square crop, resize, flip.

Real datasets come in any size and aspect ratio; models want square `image_size` inputs. Images are
resampled with an antialiasing bicubic filter; dense targets (depth, panoptic ids) with nearest
neighbour, so no depth is invented between a surface and an invalid (0) pixel and ids stay ids.
"""

from __future__ import annotations

import typing

import numpy as np
from PIL import Image

from fsq_jax.config_lib.sections import CropMode
from fsq_jax.data.scenes import luminance

CROP_MODES = typing.get_args(CropMode)
# Keys holding [H, W, ...] maps that must be cropped, resized and flipped with the image.
DENSE_KEYS = ("depth", "panoptic_semantic", "panoptic_instance")


def crop_window(
    height: int, width: int, mode: str, rng: np.random.Generator | None = None
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of the region that becomes the square output.

    `center`: the largest centred square; `random`: the largest square at a random offset along the
    longer side (needs `rng`); `resize`: the whole image (the aspect ratio is not preserved).
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot crop an empty image of size {height}x{width}")
    if mode == "resize":
        return 0, 0, height, width
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


def square_resize(
    example: dict[str, np.ndarray],
    size: int,
    mode: str,
    flip: bool,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Crops (per `mode`), resizes to `size` and optionally flips an example; adds `gray`.

    `example` holds `image` uint8 [H, W, 3] and optionally dense maps [H, W] under DENSE_KEYS (same
    H, W) and a scalar `label`. The same window and flip apply to every map.
    """
    image = example["image"]
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
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
    out["gray"] = luminance(out["image"])
    if "label" in example:
        out["label"] = np.int32(example["label"])
    return out
