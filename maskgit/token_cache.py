"""Stage-II training tokens pre-tokenised to disk, so the frozen encoder runs once, not per step.

A cache directory holds `tokens.npy` (uint16 or int32 [N, h * w], memory-mapped when read),
`labels.npy` (int32 [N]) and `meta.json` (what made it: the tokenizer's fingerprint, token grid,
codebook size, the data fields that decide the images, passes). It covers `passes` passes over the
train split as the input pipeline yields them in order, each pass with its own crop / flip draws.
Training then reads it through `fsq_jax.data.batches`, shuffled by the data seed like images.

A cache is written into a temporary sibling directory and renamed into place when complete, so an
interrupted build never leaves a cache that looks finished; an existing cache made by another
tokenizer or other data is refused with the field that differs, never overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from fsq_jax.config_lib import require
from fsq_jax.data.errors import DataError

META_FILE = "meta.json"
TOKENS_FILE = "tokens.npy"
LABELS_FILE = "labels.npy"
FORMAT_VERSION = 1
# The data fields that decide which images (and so which tokens) the train stream holds.
DATA_FIELDS = ("source", "image_size", "seed", "crop", "random_flip", "min_objects",
               "max_objects", "train_size")


class TokenCacheError(DataError):
    """A token cache that is missing, incomplete, corrupt or made for other inputs."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenCacheConfig:
    """`token_cache.*`: pre-tokenised training tokens (off when `dir` is empty)."""

    dir: str  # "" = tokenise on the fly; else the cache directory (built if missing)
    passes: int  # passes over the train split to tokenise (augmentations differ)
    batch_size: int  # images per tokenisation call while building

    def __post_init__(self):
        require(self.passes >= 1, "passes", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")


def fingerprint(variables: Any) -> str:
    """sha256 of a variable tree's leaves (paths, dtypes, shapes, bytes): names a tokenizer."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def expected_meta(data_config: ml_collections.ConfigDict, tokenizer_fingerprint: str,
                  grid: tuple[int, int], codebook_size: int, passes: int) -> dict[str, Any]:
    """What a cache for these inputs must record (compared field by field when opened)."""
    from fsq_jax.data import pipeline

    data = {key: pipeline._field(data_config, key) for key in DATA_FIELDS}
    return {"format_version": FORMAT_VERSION, "tokenizer_sha256": tokenizer_fingerprint,
            "grid": list(grid), "codebook_size": int(codebook_size), "passes": int(passes),
            "data": data}


class TokenCacheSource:
    """Random-access examples {"tokens": int32 [h * w], "label": int32} of a finished cache."""

    def __init__(self, directory: str, expected: Mapping[str, Any] | None = None):
        meta_path = os.path.join(directory, META_FILE)
        if not os.path.isfile(meta_path):
            raise TokenCacheError(f"token cache {directory!r}: no {META_FILE} (not a finished "
                                  "cache; delete the directory or choose another token_cache.dir)")
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
            self._tokens = np.load(os.path.join(directory, TOKENS_FILE), mmap_mode="r")
            self._labels = np.load(os.path.join(directory, LABELS_FILE), mmap_mode="r")
        except (OSError, ValueError) as error:  # truncated .npy, bad JSON, missing file
            raise TokenCacheError(f"token cache {directory!r} is unreadable: {error}") from None
        count = self.meta.get("num_examples")
        if self._tokens.shape[0] != count or self._labels.shape != (count,):
            raise TokenCacheError(
                f"token cache {directory!r}: {TOKENS_FILE} has {self._tokens.shape[0]} rows and "
                f"{LABELS_FILE} {self._labels.shape}, {META_FILE} says {count}")
        if expected is not None:
            for key, (made, needed) in _differences(self.meta, expected).items():
                raise TokenCacheError(
                    f"token cache {directory!r} was made for {key} = {made!r}, this run needs "
                    f"{needed!r}; point token_cache.dir elsewhere (the cache is left as it is)")
        self.directory = directory

    def __len__(self) -> int:
        return int(self._tokens.shape[0])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"tokens": np.asarray(self._tokens[index], np.int32),
                "label": np.asarray(self._labels[index], np.int32)}


def _differences(made: Mapping[str, Any], needed: Mapping[str, Any], prefix: str = ""
                 ) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (made, needed)} for every field of `needed` that `made` records otherwise."""
    out = {}
    for key, value in needed.items():
        other = made.get(key)
        if isinstance(value, Mapping) and isinstance(other, Mapping):
            out.update(_differences(other, value, f"{prefix}{key}."))
        elif other != value:
            out[f"{prefix}{key}"] = (other, value)
    return out


def _token_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.uint16 if codebook_size <= 2**16 else np.int32)


def build(directory: str, data_config: ml_collections.ConfigDict,
          tokenize: Callable[[np.ndarray], np.ndarray], meta: Mapping[str, Any],
          batch_size: int, log: Callable[[str], None] = print) -> TokenCacheSource:
    """Tokenises `meta["passes"]` passes of the train split into `directory` (atomically).

    `tokenize`: host function uint8 images [B, H, W, 3] -> int tokens [B, h, w]. Progress
    (images/s, ETA) goes to `log`. Returns the finished cache.
    """
    from fsq_jax import data

    if os.path.exists(directory):
        raise TokenCacheError(f"token cache {directory!r} exists already; not overwriting it")
    passes = int(meta["passes"])
    per_pass = data.num_examples(data_config, "train")
    total = per_pass * passes
    length = meta["grid"][0] * meta["grid"][1]
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = f"{os.path.abspath(directory)}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        tokens = np.lib.format.open_memmap(os.path.join(staging, TOKENS_FILE), mode="w+",
                                           dtype=_token_dtype(meta["codebook_size"]),
                                           shape=(total, length))
        labels = np.lib.format.open_memmap(os.path.join(staging, LABELS_FILE), mode="w+",
                                           dtype=np.int32, shape=(total,))
        written, started, last_report = 0, time.monotonic(), 0.0
        for batch in _train_images(data_config, batch_size, passes, total):
            count = batch["image"].shape[0]
            codes = np.asarray(tokenize(batch["image"])).reshape(count, -1)
            if codes.min() < 0 or codes.max() >= meta["codebook_size"]:
                raise TokenCacheError(f"tokenizer produced codes outside [0, "
                                      f"{meta['codebook_size']}): {codes.min()}..{codes.max()}")
            tokens[written:written + count] = codes
            labels[written:written + count] = batch["label"]
            written += count
            elapsed = time.monotonic() - started
            if elapsed - last_report >= 10 or written == total:
                rate = written / max(elapsed, 1e-9)
                log(f"token cache: {written}/{total} images ({100 * written / total:.0f}%) "
                    f"{rate:.0f} images/s ETA {(total - written) / max(rate, 1e-9):.0f}s")
                last_report = elapsed
        tokens.flush()
        labels.flush()
        del tokens, labels
        with open(os.path.join(staging, META_FILE), "w") as f:
            json.dump({**meta, "num_examples": total}, f, indent=2)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TokenCacheSource(directory, meta)


def _train_images(data_config: ml_collections.ConfigDict, batch_size: int, passes: int,
                  total: int) -> Iterator[dict[str, np.ndarray]]:
    """The train split in stream order (no shuffle) for `passes` passes, in batches of
    `batch_size` (the last one partial: no example is dropped)."""
    from fsq_jax import data

    stream = data.build(data_config, "train", 1, shuffle=False, num_epochs=passes)
    images, labels = [], []
    for example in stream:
        images.append(example["image"][0])
        labels.append(example["label"][0] if "label" in example else 0)
        if len(images) == batch_size:
            yield {"image": np.stack(images), "label": np.asarray(labels, np.int32)}
            images, labels = [], []
    if images:
        yield {"image": np.stack(images), "label": np.asarray(labels, np.int32)}


def open_or_build(directory: str, data_config: ml_collections.ConfigDict,
                  tokenize: Callable[[np.ndarray], np.ndarray], meta: Mapping[str, Any],
                  batch_size: int, log: Callable[[str], None] = print) -> TokenCacheSource:
    """The cache at `directory` (checked against `meta`), built first when absent.

    Only a single-process run builds; in a multi-host run build it beforehand with
    `scripts/pretokenize.py` (every host must read the same files).
    """
    if os.path.exists(directory):
        return TokenCacheSource(directory, meta)
    if jax.process_count() > 1:
        raise TokenCacheError(f"token cache {directory!r} does not exist; build it before a "
                              "multi-host run with scripts/pretokenize.py")
    return build(directory, data_config, tokenize, meta, batch_size, log)
