"""Stage-II training tokens pre-tokenised to disk, so the frozen encoder runs once, not per step.

A cache directory holds `tokens.npy` (uint16 or int32 [N, h * w], memory-mapped when read),
`labels.npy` (int32 [N]) and `meta.json` (what made it: the tokenizer's fingerprint, token grid,
codebook size, the data fields that decide the images, passes). It covers `passes` passes over the
train split as the input pipeline yields them in order, each pass with its own crop / flip draws.
Training then reads it through `fsq_jax.data.batches`, shuffled by the data seed like images.

A cache is written into a temporary sibling directory (`<dir>.partial-<pid>`) and renamed into
place when complete, so an interrupted build never leaves a cache that looks finished; a build
stopped by SIGTERM (or killed) is continued by the next one, and staging directories of dead
builds are cleaned up. An existing cache made by another tokenizer or other data is refused with
the field that differs, never overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from fsq_jax.config_lib import require
from fsq_jax.data.errors import DataError
from fsq_jax.train.stopping import StopFlag, StopRequestedError

META_FILE = "meta.json"
TOKENS_FILE = "tokens.npy"
LABELS_FILE = "labels.npy"
PROGRESS_FILE = "progress.json"  # in a staging directory: rows finished so far
_PARTIAL = ".partial-"  # staging directory: <cache dir>.partial-<pid>
_PROGRESS_EVERY_S = 10.0
FORMAT_VERSION = 1
# The data fields that decide which images (and so which tokens) the train stream holds.
DATA_FIELDS = ("source", "image_size", "seed", "crop", "random_flip", "min_objects",
               "max_objects", "train_size", "folder_holdout")


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

    SIGTERM / SIGINT stop the build within one batch: what is written stays in the staging
    directory with its progress record and `StopRequestedError` is raised; the next build of the
    same cache (same `meta`) continues from there, also after a kill -9 (from the last record, at
    most `_PROGRESS_EVERY_S` old). Staging directories of dead builds that do not fit are
    deleted.
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
    staging = f"{os.path.abspath(directory)}{_PARTIAL}{os.getpid()}"
    written = _adopt_orphan(directory, staging, meta, total, log)
    mode = "r+" if written else "w+"
    if not written:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    try:
        tokens = np.lib.format.open_memmap(os.path.join(staging, TOKENS_FILE), mode=mode,
                                           dtype=_token_dtype(meta["codebook_size"]),
                                           shape=(total, length))
        labels = np.lib.format.open_memmap(os.path.join(staging, LABELS_FILE), mode=mode,
                                           dtype=np.int32, shape=(total,))
        _record(staging, meta, total, written, tokens, labels)
        started, last_report, resumed_at = time.monotonic(), 0.0, written
        with StopFlag() as stop:
            for batch in _train_images(data_config, batch_size, passes, total, written):
                count = batch["image"].shape[0]
                codes = np.asarray(tokenize(batch["image"])).reshape(count, -1)
                if codes.min() < 0 or codes.max() >= meta["codebook_size"]:
                    raise TokenCacheError(f"tokenizer produced codes outside [0, "
                                          f"{meta['codebook_size']}): {codes.min()}..{codes.max()}")
                tokens[written:written + count] = codes
                labels[written:written + count] = batch["label"]
                written += count
                elapsed = time.monotonic() - started
                if stop.is_set():
                    _record(staging, meta, total, written, tokens, labels)
                    raise StopRequestedError(
                        f"token cache {directory!r}: stopped on request at {written}/{total} "
                        f"images; kept in {staging}, the next build continues from there")
                if elapsed - last_report >= _PROGRESS_EVERY_S or written == total:
                    _record(staging, meta, total, written, tokens, labels)
                    rate = (written - resumed_at) / max(elapsed, 1e-9)
                    log(f"token cache: {written}/{total} images ({100 * written / total:.0f}%) "
                        f"{rate:.0f} images/s ETA {(total - written) / max(rate, 1e-9):.0f}s")
                    last_report = elapsed
        tokens.flush()
        labels.flush()
        del tokens, labels
        os.remove(os.path.join(staging, PROGRESS_FILE))
        with open(os.path.join(staging, META_FILE), "w") as f:
            json.dump({**meta, "num_examples": total}, f, indent=2)
        os.replace(staging, directory)
    except StopRequestedError:
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TokenCacheSource(directory, meta)


def _record(staging: str, meta: Mapping[str, Any], total: int, written: int,
            *arrays: np.memmap) -> None:
    """Flushes the staging arrays, then records how many of their rows are final."""
    for array in arrays:
        array.flush()
    record = {"meta": dict(meta), "total": total, "written": written,
              "host": socket.gethostname(), "pid": os.getpid()}
    tmp = os.path.join(staging, f"{PROGRESS_FILE}.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(staging, PROGRESS_FILE))


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _orphans(directory: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(path, progress record or None) of the staging directories of `directory` that a build
    on this host left behind when it died or stopped (this process's own included); staging
    directories of live builds and of other hosts (which this host cannot judge) are not
    listed."""
    parent, base = os.path.split(os.path.abspath(directory))
    found = []
    for name in sorted(os.listdir(parent)):
        pid = name[len(base) + len(_PARTIAL):]
        if not name.startswith(base + _PARTIAL) or not pid.isdigit():
            continue
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, PROGRESS_FILE)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = None
        host = record.get("host") if isinstance(record, dict) else None
        if host not in (None, socket.gethostname()) or (
                int(pid) != os.getpid() and _pid_running(int(pid))):
            continue
        found.append((path, record if isinstance(record, dict) else None))
    return found


def _adopt_orphan(directory: str, staging: str, meta: Mapping[str, Any], total: int,
                  log: Callable[[str], None]) -> int:
    """Moves the furthest orphaned staging directory of this very cache to `staging` and returns
    its finished row count (0 when there is none); deletes every other orphan."""
    candidates = []
    for path, record in _orphans(directory):
        fits = (record is not None and record.get("meta") == json.loads(json.dumps(meta))
                and record.get("total") == total and 0 < int(record.get("written", 0)) <= total)
        if fits:
            candidates.append((int(record["written"]), path))
        else:
            log(f"token cache: removing {path}, left by a build that died and made for other "
                "inputs")
            shutil.rmtree(path, ignore_errors=True)
    candidates.sort(reverse=True)
    for _, path in candidates[1:]:
        log(f"token cache: removing {path}, left by a build that died (a further one is kept)")
        shutil.rmtree(path, ignore_errors=True)
    if not candidates:
        return 0
    written, path = candidates[0]
    try:
        os.rename(path, staging)
    except FileNotFoundError:  # another build on this host adopted it first
        return 0
    log(f"token cache: continuing the build in {path} at {written}/{total} images")
    return written


def _train_images(data_config: ml_collections.ConfigDict, batch_size: int, passes: int,
                  total: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The train split in stream order (no shuffle) for `passes` passes from example `start`
    on, in batches of `batch_size` (the last one partial: no example is dropped)."""
    from fsq_jax import data

    stream = data.build(data_config, "train", 1, shuffle=False, num_epochs=passes,
                        start_step=start)
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
