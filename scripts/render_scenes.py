"""Renders a grid of procedural scenes (RGB, gray, depth, panoptic) to docs/scenes.png.

Each row shows examples with their ground truth: the image, its luminance, the depth map (near is
bright) and the panoptic map (a colour per class, shades per instance, stuff in grey tones).
"""

from __future__ import annotations

import pathlib

import matplotlib
import numpy as np
from absl import flags
from PIL import Image

from fsq_jax.data import scenes
from fsq_jax.train import cli

_OUTPUT = flags.DEFINE_string("output", "docs/scenes.png", "Where the PNG goes.")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed of the scenes.")
_SPLIT = flags.DEFINE_string("split", "train", "Split of the scenes.")
_COUNT = flags.DEFINE_integer("count", 16, "Number of scenes.")
_GROUPS = flags.DEFINE_integer("groups", 2, "Scenes side by side per row.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Pixels per side.")


def depth_colours(depth: np.ndarray) -> np.ndarray:
    """Depth [H, W] in metres as uint8 RGB [H, W, 3] (magma colormap of inverse depth)."""
    inverse = (1.0 / depth - 1.0 / scenes.BACKDROP_DEPTH) / (
        1.0 / scenes.MIN_DEPTH * 1.6 - 1.0 / scenes.BACKDROP_DEPTH
    )
    rgba = matplotlib.colormaps["magma"](np.clip(inverse, 0.0, 1.0))
    return (rgba[..., :3] * 255).astype(np.uint8)


def panoptic_colours(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Panoptic maps [H, W] as uint8 RGB [H, W, 3]: a hue per thing class, a shade per instance."""
    palette = matplotlib.colormaps["tab20"](np.arange(scenes.NUM_CLASSES))[:, :3]
    stuff = {scenes.SKY: (0.82, 0.86, 0.92), scenes.GROUND: (0.45, 0.42, 0.38)}
    out = np.zeros((*semantic.shape, 3))
    for class_id, colour in stuff.items():
        out[semantic == class_id] = colour
    things = semantic < scenes.NUM_CLASSES
    shade = 1.0 - 0.18 * ((instance - 1) % 4)
    out[things] = palette[semantic[things]] * shade[things, None]
    # Instance boundaries in black make touching instances of one class readable.
    edge = np.zeros(instance.shape, dtype=bool)
    edge[:, 1:] |= instance[:, 1:] != instance[:, :-1]
    edge[1:] |= instance[1:] != instance[:-1]
    out[edge & (instance > 0)] = 0.0
    return (out * 255).astype(np.uint8)


def grid(seed: int, split: str, count: int, image_size: int, groups: int) -> np.ndarray:
    """uint8 [rows * S, groups * 4 * S, 3]: `count` examples, four panels each."""
    rows = -(-count // groups)
    size = image_size
    canvas = np.full((rows * (size + 4), groups * (4 * size + 12), 3), 255, dtype=np.uint8)
    for index in range(count):
        example = scenes.render_scene(seed, split, index, size)
        panels = [
            example["image"],
            np.repeat(example["gray"], 3, axis=-1),
            depth_colours(example["depth"]),
            panoptic_colours(example["panoptic_semantic"], example["panoptic_instance"]),
        ]
        row, group = divmod(index, groups)
        y = row * (size + 4)
        for p, panel in enumerate(panels):
            x = group * (4 * size + 12) + p * size
            canvas[y : y + size, x : x + size] = panel
    return canvas


def main(argv: list[str]) -> None:
    cli.start(argv)
    image = grid(_SEED.value, _SPLIT.value, _COUNT.value, _IMAGE_SIZE.value, _GROUPS.value)
    path = pathlib.Path(_OUTPUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    print(f"wrote {path} ({image.shape[1]}x{image.shape[0]})")


if __name__ == "__main__":
    cli.run(main)
