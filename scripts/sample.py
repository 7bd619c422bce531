"""Samples class-conditional images from a trained MaskGIT transformer workdir.

Writes `<out>/samples_grid.png` (one row per class) and, with `--num_images N`, `<out>/samples.npz`
in ADM format (`arr_0` uint8 [N, H, W, 3] images, `arr_1` int32 [N] class-balanced labels, as
guided-diffusion's image_sample.py), streamed to disk batch by batch; score it with
`python -m fsq_jax.eval.adm REFERENCE.npz <out>/samples.npz`. The frozen tokenizer's weights come
from the transformer checkpoint; its architecture from `tokenizer_workdir/config.json`.

  python scripts/sample.py --workdir runs/maskgit/fsq_tiny/transformer --num_images 1000
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import flags

from fsq_jax.train import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Transformer (stage II) workdir.", required=True)
_OUT = flags.DEFINE_string("out", "", "Output directory (default: WORKDIR/samples).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 0, "Images in samples.npz (0: write only the "
                                   "grid).", lower_bound=0)
_PER_CLASS = flags.DEFINE_integer("per_class", 8, "Grid columns (samples per class).",
                                  lower_bound=1)
_MAX_CLASSES = flags.DEFINE_integer("max_classes", 20, "Grid rows at most.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Samples per batch.", lower_bound=1)
_GUIDANCE = flags.DEFINE_float("guidance_scale", None,
                               "Override sampling.guidance_scale (logits = c + s * (c - u)).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Override sampling.num_steps.")
_CHOICE_TEMPERATURE = flags.DEFINE_float("choice_temperature", None,
                                         "Override sampling.choice_temperature.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv: list[str]) -> None:
    cli.start(argv)
    import jax
    from PIL import Image

    from fsq_jax.eval.adm_npz import LABELS_KEY, NpzImageWriter
    from fsq_jax.images import image_grid
    from maskgit import tasks

    try:
        task, restored = tasks.TransformerTask.from_workdir(_WORKDIR.value)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"cannot sample from {_WORKDIR.value!r}: {error}")
    for field, flag in (("guidance_scale", _GUIDANCE), ("num_steps", _NUM_STEPS),
                        ("choice_temperature", _CHOICE_TEMPERATURE)):
        if flag.value is not None:
            task.config.sampling[field] = flag.value
    sample = task.sample_fn(restored)
    rng = jax.random.key(_SEED.value)
    out = _OUT.value or os.path.join(_WORKDIR.value, "samples")
    os.makedirs(out, exist_ok=True)

    classes = min(task.num_classes, _MAX_CLASSES.value)
    grid_labels = np.repeat(np.arange(classes, dtype=np.int32), _PER_CLASS.value)
    grid_images = sample(grid_labels, jax.random.fold_in(rng, 0))
    Image.fromarray(image_grid(grid_images, rows=classes)).save(
        os.path.join(out, "samples_grid.png"))
    print(f"wrote {out}/samples_grid.png ({classes} classes x {_PER_CLASS.value})")
    if not _NUM_IMAGES.value:
        return
    labels = [np.zeros((0,), np.int32)]
    start = time.perf_counter()
    batches = tasks.iterate_labels(_NUM_IMAGES.value, task.num_classes, _BATCH_SIZE.value)
    with NpzImageWriter(os.path.join(out, "samples.npz"), _NUM_IMAGES.value,
                        grid_images.shape[1:]) as writer:
        for index, batch_labels in enumerate(batches):
            writer.write(np.asarray(sample(batch_labels, jax.random.fold_in(rng, index + 1))))
            labels.append(batch_labels)
        writer.extras[LABELS_KEY] = np.concatenate(labels)
    rate = _NUM_IMAGES.value / (time.perf_counter() - start)
    print(f"wrote {out}/samples.npz ({_NUM_IMAGES.value} images, {rate:.1f} images/s)")


if __name__ == "__main__":
    cli.run(main)
