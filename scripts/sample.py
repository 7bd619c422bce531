"""Samples class-conditional images from a trained MaskGIT transformer workdir.

Writes `<out>/samples_grid.png` (one row per class) and `<out>/samples.npz` in ADM format
(`arr_0` uint8 [N, H, W, 3] images, `arr_1` int32 [N] class-balanced labels, as guided-diffusion's
image_sample.py), streamed to disk batch by batch; score it with
`python -m fsq_jax.eval.adm REFERENCE.npz <out>/samples.npz`. The frozen tokenizer's weights come
from the transformer checkpoint; its architecture from `tokenizer_workdir/config.json`.

  python scripts/sample.py --workdir runs/maskgit/fsq_tiny/transformer --num_images 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="transformer (stage II) workdir")
    parser.add_argument("--out", default="", help="output directory (default: WORKDIR/samples)")
    parser.add_argument("--num_images", type=int, default=0,
                        help="images in the .npz for FID (0: only the grid's images)")
    parser.add_argument("--per_class", type=int, default=8, help="grid columns (per class)")
    parser.add_argument("--max_classes", type=int, default=20, help="grid rows at most")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--guidance_scale", type=float, default=None,
                        help="override sampling.guidance_scale (logits = c + s * (c - u))")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="override sampling.num_steps")
    parser.add_argument("--choice_temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax
    from PIL import Image

    from fsq_jax.eval.adm_npz import LABELS_KEY, NpzImageWriter
    from fsq_jax.train import restore_latest
    from fsq_jax.train.loop import _read_config
    from maskgit import tasks

    config, restored = restore_latest(args.workdir)
    for field in ("guidance_scale", "num_steps", "choice_temperature"):
        value = getattr(args, field)
        if value is not None:
            config.sampling[field] = value
    if "tokenizer" not in (restored.get("model_state") or {}):
        sys.exit(f"{args.workdir!r} is not a MaskGIT transformer workdir")
    try:
        tokenizer_config = _read_config(config.tokenizer_workdir)
    except FileNotFoundError as error:
        sys.exit(f"config.tokenizer_workdir = {config.tokenizer_workdir!r}: {error}")
    task = tasks.TransformerTask(config, tokenizer_config, restored["model_state"]["tokenizer"])
    sample = task.sample_fn(restored)
    rng = jax.random.key(args.seed)
    out = args.out or os.path.join(args.workdir, "samples")
    os.makedirs(out, exist_ok=True)

    classes = min(task.num_classes, args.max_classes)
    grid_labels = np.repeat(np.arange(classes, dtype=np.int32), args.per_class)
    grid_images = sample(grid_labels, jax.random.fold_in(rng, 0))
    grid = tasks.image_grid(grid_images, rows=classes)
    Image.fromarray(grid).save(os.path.join(out, "samples_grid.png"))

    labels = [np.zeros((0,), np.int32)]
    start = time.perf_counter()
    batches = tasks.iterate_labels(args.num_images, task.num_classes, args.batch_size)
    with NpzImageWriter(os.path.join(out, "samples.npz"), args.num_images,
                        grid_images.shape[1:]) as writer:
        for index, batch_labels in enumerate(batches):
            writer.write(np.asarray(sample(batch_labels, jax.random.fold_in(rng, index + 1))))
            labels.append(batch_labels)
        writer.extras[LABELS_KEY] = np.concatenate(labels)
    elapsed = time.perf_counter() - start
    rate = f", {args.num_images / elapsed:.1f} images/s" if args.num_images else ""
    print(f"wrote {out}/samples_grid.png ({classes} classes x {args.per_class}) and "
          f"{out}/samples.npz ({args.num_images} images{rate})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
