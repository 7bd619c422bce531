"""The real images FID and precision/recall compare against: a split of the run's data or an ADM
reference batch.

`SplitReference`: Gaussian statistics of pool3 features over a split (the whole split by
default), read once through the evaluation context (in order, no augmentation, every example
once over all hosts) and cached as `.npz` under a key that names the data; precision/recall
features of the split's first `pr_examples` images, cached as `.npy`. A cache hit reads no data.

`ADMReference`: an ADM reference batch `.npz` (openai/guided-diffusion `evaluations/`, e.g.
`VIRTUAL_imagenet256_labeled.npz`): FID against its `mu`/`sigma` (statistics of the whole ImageNet
train set) when present, else against its images' statistics; precision/recall against the
features of its images `arr_0` (10k in the published batches), as `evaluator.py` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fsq_jax.eval import fid, inception
from fsq_jax.eval.progress import Progress


@dataclasses.dataclass(frozen=True)
class Reference:
    """Loaded reference: `mu` float64 [D], `sigma` float64 [D, D]; `count` images behind them
    (None when a file gives only the statistics); `features` float32 [N, D] for
    precision/recall (None when not asked for)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    features: np.ndarray | None
    description: str


@contextlib.contextmanager
def _cache_lock(path: Path):
    """An exclusive lock on `<path>.lock` (released when the process ends, however it ends);
    none in a cache this process cannot write (it can only read what is there)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (closed below)
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else inception.default_cache_dir()


def _feature_dim(extractor: fid.FeatureFn) -> int:
    return int(getattr(extractor, "feature_dim", inception.FEATURE_DIM))


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Atomic: concurrent readers (other hosts, other runs) never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, array)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def real_features(extractor: fid.FeatureFn, images: np.ndarray, mask: np.ndarray
                  ) -> np.ndarray:
    """float32 [rows, D]: features of the real rows of a host batch `images` uint8 [rows, H, W,
    3] (`mask` bool [rows]), zeros at the padding (which the extractor never sees)."""
    mask = np.asarray(mask, bool)
    if len(images) != len(mask):
        raise ValueError(f"{len(images)} images for a batch of {len(mask)} rows")
    features = np.zeros((len(mask), _feature_dim(extractor)), np.float32)
    if mask.any():
        features[mask] = extractor(np.asarray(images)[mask])
    return features


@dataclasses.dataclass(frozen=True)
class SplitReference:
    """Statistics of a split of the run's data, computed once and cached.

    Attributes:
      key: cache key naming everything that decides the images and their number (source, seed,
        resolution, crop, split, "full" or the count), e.g.
        "maskgit/tfds-imagenet2012-seed0/train/256-center/full".
      split: the split read.
      num_examples: statistics over its first this many (None: the whole split).
      pr_examples: precision/recall features of its first this many (0: none kept).
    """

    key: str
    split: str = "train"
    num_examples: int | None = None
    pr_examples: int = 0

    def __post_init__(self):
        fid.stats_filename(self.key)  # validates the key early
        if self.num_examples is not None and self.num_examples < 2:
            raise ValueError(f"reference num_examples = {self.num_examples} must be >= 2 or "
                             "None (the whole split)")
        if self.pr_examples < 0:
            raise ValueError(f"reference pr_examples = {self.pr_examples} must be >= 0")

    def paths(self, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
        """(statistics `.npz`, precision/recall features `.npy`) in the cache."""
        root = _root(cache_dir)
        features = fid.stats_filename(f"{self.key}/first{self.pr_examples}")
        return (root / "fid_stats" / fid.stats_filename(self.key),
                root / "fid_features" / features.replace(".npz", ".npy"))

    def load(self, context: Any, extractor: fid.FeatureFn, *, batch_size: int,
             cache_dir: str | os.PathLike | None = None, features: bool = True) -> Reference:
        """The statistics (and with `features`, the first `pr_examples` features), from the
        cache or from one pass over the split through `context` (a collective with several
        processes: all of them take the same branch). Separate runs on one machine (the
        demo's and the sweep's, side by side) compute a missing reference once: the first
        holds a lock on it and the others wait, then read its files."""
        import jax

        stats_path, _ = self.paths(cache_dir)
        lock = (_cache_lock(stats_path) if jax.process_count() == 1  # a multi-host pass is
                else contextlib.nullcontext())                       # one collective already
        with lock:
            return self._load(context, extractor, batch_size, cache_dir, features)

    def _load(self, context: Any, extractor: fid.FeatureFn, batch_size: int,
              cache_dir: str | os.PathLike | None, features: bool) -> Reference:
        from fsq_jax.train.evaluation import every_process

        stats_path, features_path = self.paths(cache_dir)
        features = features and self.pr_examples > 0
        need_stats = not every_process(stats_path.is_file())
        need_features = features and not every_process(features_path.is_file())
        stats = None if need_stats else fid.FeatureStats.load(stats_path)
        kept = None
        if need_stats or need_features:
            stats_limit = (self.num_examples or -1) if need_stats else 0  # -1: no limit
            keep = self.pr_examples if need_features else 0
            new_stats, kept = self._read(context, extractor, batch_size, stats_limit, keep)
            if need_stats:
                stats = new_stats
                if stats.count < 2:
                    raise ValueError(f"reference {self.key!r}: the {self.split!r} split yielded "
                                     f"{stats.count} images; need >= 2")
                stats.save(stats_path)
            if need_features:
                _save_npy(features_path, kept)
        if features and kept is None:
            kept = np.load(features_path)
        return Reference(stats.mean, stats.covariance, stats.count,
                         kept if features else None, f"{self.split!r} split ({self.key})")

    def _read(self, context: Any, extractor: fid.FeatureFn, batch_size: int, stats_limit: int,
              keep: int) -> tuple[fid.FeatureStats, np.ndarray | None]:
        """One pass over the first max(stats_limit, keep) images (the whole split when
        stats_limit is -1): statistics of the first `stats_limit`, features of the first
        `keep`."""
        stats = fid.FeatureStats(_feature_dim(extractor))
        kept: list[np.ndarray] = []
        seen = 0
        num_examples = None if stats_limit < 0 else max(stats_limit, keep)
        batches = context.batches(batch_size, num_examples, self.split)
        count = "whole split" if num_examples is None else f"first {num_examples}"
        progress = Progress(f"FID reference: Inception features of {self.split!r} ({count})",
                            batches.num_examples)
        for batch in batches:
            images = np.asarray(batch["image"])
            if images.dtype != np.uint8:
                raise ValueError(f"the {self.split!r} split's images must be uint8 [B, H, W, 3], "
                                 f"got {images.dtype}")
            features = context.gather(real_features(extractor, images, batch["mask"]), batch)
            in_stats = features if stats_limit < 0 else features[:max(stats_limit - seen, 0)]
            if len(in_stats):
                stats.update(in_stats)
            if seen < keep:
                kept.append(features[:keep - seen])
            seen += len(features)
            progress.update(len(features))
        progress.done()
        return stats, (np.concatenate(kept).astype(np.float32) if keep else None)


@dataclasses.dataclass(frozen=True)
class ADMReference:
    """An ADM reference batch `.npz`: `arr_0` uint8 images, optionally `mu`/`sigma`."""

    path: str

    def __post_init__(self):
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"{self.path}: no such ADM reference batch (.npz with arr_0 "
                                    "and optionally mu/sigma)")

    def _features_path(self, cache_dir: str | os.PathLike | None, dim: int) -> Path:
        """Keyed by the file's resolved path, size and modification time: a changed file is a
        new entry."""
        path = Path(self.path).resolve()
        info = path.stat()
        digest = hashlib.sha1(f"{path}:{info.st_size}:{info.st_mtime_ns}:{dim}".encode())
        return _root(cache_dir) / "fid_features" / f"adm-{path.stem}-{digest.hexdigest()[:16]}.npy"

    def load(self, context: Any, extractor: fid.FeatureFn, *, batch_size: int,
             cache_dir: str | os.PathLike | None = None, features: bool = True) -> Reference:
        """`mu`/`sigma` from the file (else from its images), and with `features` the pool3
        features of all its images (cached). Each process reads the file itself."""
        del context  # the file is not a split: no sharding, no collectives
        from fsq_jax.eval import adm

        dim = _feature_dim(extractor)
        batch = adm.read_reference(self.path, pool_dim=dim)
        kept = None
        if features or batch.pool_stats is None:
            cache = self._features_path(cache_dir, dim)
            if cache.is_file():
                kept = np.load(cache)
            else:
                progress = Progress(f"FID reference: Inception features of {self.path}",
                                    len(batch.images))
                parts = []
                for images in batch.images.batches(batch_size):
                    parts.append(np.asarray(extractor(images), np.float32))
                    progress.update(len(images))
                progress.done()
                kept = np.concatenate(parts)
                _save_npy(cache, kept)
        if batch.pool_stats is not None:
            (mu, sigma), count = batch.pool_stats, None
        else:
            if len(kept) < 2:
                raise ValueError(f"{self.path}: {len(kept)} images and no mu/sigma; need >= 2")
            stats = fid.FeatureStats(dim).update(kept)
            mu, sigma, count = stats.mean, stats.covariance, stats.count
        return Reference(mu, sigma, count, kept if features else None, f"ADM batch {self.path}")


def fid_against(stats: fid.FeatureStats, reference: Reference, *,
                allow_singular: bool = False) -> float:
    """FID of accumulated features against a reference, with `fid.fid_from_stats`'s rules: a
    set with no more samples than dimensions raises unless `allow_singular` (then pytorch-fid's
    eps offset applies)."""
    counts = (("generated", stats.count), ("reference", reference.count))
    singular = [(name, n) for name, n in counts if n is not None and n <= stats.dim]
    if singular and not allow_singular:
        name, n = singular[0]
        raise ValueError(f"the {name} feature set has {n} samples for {stats.dim}-d features: "
                         "its covariance is singular and FID is not meaningful. Use more samples "
                         "or pass allow_singular=True (smoke tests only).")
    return fid.frechet_distance(stats.mean, stats.covariance, reference.mu, reference.sigma,
                                eps=fid.DEFAULT_EPS if singular else 0.0)
