"""Image-folder source: `folder:/path` with one subfolder per class, or just images.

Lets a user train on their own images without converting them. Files are found once, sorted, and
read lazily by index (random access, so the pipeline stays deterministic and resumable); symlinked
folders are followed, each real folder once (a symlink loop ends there). A corrupt or unreadable
file, or one with more than `max_pixels` pixels (read from its header, before decoding), is never
turned into a blank image: it fails with its path, or is skipped per `on_corrupt` (warned about
once per process, listed in `FolderSource.skipped` and in the run's results.json).

Splits are `train/`, `validation/` (or `val/`) and `test/` subfolders. A folder without them is
the train split only: evaluating on the training images would overstate every metric, so its
validation split is refused unless `holdout` (data.folder_holdout) sets aside a fraction of the
images, chosen by a hash of each path, which training then never sees.
"""

from __future__ import annotations

import logging
import os
import threading
import typing
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from fsq_jax.config_lib.sections import OnCorrupt
from fsq_jax.data.errors import DataError

ON_CORRUPT = typing.get_args(OnCorrupt)
# Split subfolders recognised under the root, e.g. root/train/<class>/x.jpg.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
# The `data.max_pixels` default (see fsq_jax.config_lib.DataConfig).
MAX_PIXELS = 50_000_000
_REPORTED_PATHS = 100  # skipped paths listed by `skip_report` (all are counted)

_logger = logging.getLogger(__name__)


class CorruptImageError(DataError):
    """An image file could not be read or decoded."""


class FolderLayoutError(DataError, ValueError):
    """An image folder laid out so that it cannot be used (no such split, no images, loose
    images beside class folders, classes missing from the train split)."""


class _SkipRecord:
    """The images this process found unreadable, with the reason.

    Deliberately one per process: a run opens its sources several times (each split, each
    restarted stream, the token-cache build) and reads each file once per epoch, yet a bad file
    should be warned about once, never decoded again, and listed in the run's results.json.
    """

    def __init__(self):
        self._lock = threading.Lock()  # sources are read from several threads
        self._reasons: dict[str, str] = {}

    def add(self, path: str, reason: str) -> bool:
        """Records `path`; True the first time."""
        with self._lock:
            if path in self._reasons:
                return False
            self._reasons[path] = reason
            return True

    def reason(self, path: str) -> str | None:
        return self._reasons.get(path)

    def under(self, root: str) -> dict[str, str]:
        prefix = os.path.join(os.path.abspath(root), "")
        with self._lock:
            return {p: r for p, r in self._reasons.items() if os.path.abspath(p).startswith(prefix)}


_SKIPPED = _SkipRecord()


def skip_report(source: str) -> dict[str, typing.Any]:
    """`{"count", "paths": {path: reason}}` (at most 100 paths) of the images of data source
    `source` ("folder:<path>") this process skipped as unreadable; count 0 for other sources."""
    kind, _, root = source.partition(":")
    skipped = _SKIPPED.under(root) if kind == "folder" and root else {}
    return {"count": len(skipped),
            "paths": dict(sorted(skipped.items())[:_REPORTED_PATHS])}


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions PIL can open (".jpg", ".png", ".webp", ...)."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _walk_once(directory: str) -> Iterator[tuple[str, list[str]]]:
    """(folder, sorted file names) under `directory`, following symlinks but entering each real
    folder once, and never a folder that contains `directory` (a link up to it is a loop)."""
    top = os.path.realpath(directory)
    ancestors = {top}
    while os.path.dirname(top) != top:
        top = os.path.dirname(top)
        ancestors.add(top)
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited or (dirpath != directory and real in ancestors):
            dirnames.clear()  # reached again through a symlink: a loop, or a second link
            continue
        visited.add(real)
        dirnames.sort()
        yield dirpath, sorted(filenames)


def _images_in(directory: str, extensions: frozenset[str]) -> list[str]:
    paths = []
    for dirpath, filenames in _walk_once(directory):
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                paths.append(os.path.join(dirpath, name))
    return paths


def _split_names(split: str) -> str:
    names = SPLIT_FOLDERS.get(split, (split,))
    return f"{names[0]}/" + "".join(f" (or {n}/)" for n in names[1:])


def split_root(root: str, split: str) -> str | None:
    """The folder holding `split`: root/<split> (root/val for validation), None when it has no
    such subfolder. A folder without any split subfolder is the train split itself."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    present = {split_name: os.path.join(root, name)
               for split_name, names in SPLIT_FOLDERS.items() for name in reversed(names)
               if os.path.isdir(os.path.join(root, name))}
    if not present:
        return root if split == "train" else None
    return present.get(split)


def check_layout(root: str, holdout: float = 0.0, split: str = "validation") -> None:
    """Raises FolderLayoutError (one line saying what to do) unless the image folder at `root`
    has a train split and `split`: its own subfolder, or held-out train images (`holdout` > 0)."""
    train = split_root(root, "train")
    if train is None:
        raise FolderLayoutError(f"image folder {root!r} has split subfolders but no train/: put "
                                f"the training images in {os.path.join(root, 'train')}")
    if split == "train" or holdout > 0 or split_root(root, split) is not None:
        return
    raise FolderLayoutError(
        f"image folder {root!r} has no {_split_names(split)} subfolder"
        + (" (without split subfolders all its images are the train split)"
           if train == root else "")
        + ", and evaluating on the training images would overstate every metric: make "
        f"{os.path.join(root, 'train')} and {os.path.join(root, 'validation')} subfolders, or "
        "hold out a fraction of the images for it with data.folder_holdout (e.g. 0.05)")


def held_out(path: str, root: str, holdout: float) -> bool:
    """Whether the image at `path` (under the train folder `root`) is one of the `holdout`
    fraction set aside for evaluation: a hash of its relative path, so adding images keeps the
    others where they were."""
    relative = os.path.relpath(path, root).replace(os.sep, "/")
    return zlib.crc32(relative.encode()) / 2**32 < holdout


def scan(
    directory: str, class_names: Sequence[str] | None = None
) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, class names) of the images under `directory`.

    Subfolders are classes, labelled 0, 1, ... in sorted name order (images nested deeper belong to
    their top-level subfolder); without subfolders every image has label 0 and the one class is
    named after the folder. With `class_names` (the train split's classes) labels follow that list,
    so every split labels a class alike even if one split lacks some classes.
    """
    extensions = image_extensions()
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image folder {directory!r} does not exist or is not a directory")
    entries = sorted(os.listdir(directory))
    classes = [e for e in entries if os.path.isdir(os.path.join(directory, e))
               and not e.startswith(".")]
    loose = [e for e in entries if os.path.isfile(os.path.join(directory, e))
             and os.path.splitext(e)[1].lower() in extensions and not e.startswith(".")]
    if classes and loose:
        raise FolderLayoutError(
            f"image folder {directory!r} mixes class subfolders ({', '.join(classes[:3])}, ...) "
            f"with loose images ({loose[0]}, ...): put every image in a class subfolder"
        )
    paths: list[str] = []
    labels: list[int] = []
    if classes:
        names = list(class_names) if class_names is not None else classes
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise FolderLayoutError(f"image folder {directory!r} has classes missing from the "
                                    f"train split: {', '.join(unknown[:5])}")
        for name in classes:
            found = _images_in(os.path.join(directory, name), extensions)
            paths += found
            labels += [names.index(name)] * len(found)
    else:
        paths = [os.path.join(directory, e) for e in loose]
        labels = [0] * len(paths)
        names = [os.path.basename(os.path.normpath(directory))]
    if not paths:
        raise FolderLayoutError(
            f"image folder {directory!r} holds no images (looked for "
            f"{', '.join(sorted(extensions)[:8])}, ... files)"
        )
    return paths, labels, names


def read_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decodes the image at `path` as uint8 RGB [H, W, 3]; raises CorruptImageError naming it,
    also for an image of more than `max_pixels` pixels (known from its header, before any
    memory is spent on decoding it)."""
    try:
        with Image.open(path) as pil:  # reads the header only
            width, height = pil.size
            if width * height > max_pixels:
                raise _TooLargeError(
                    f"{width}x{height} = {width * height / 1e6:.1f} Mpx, more than "
                    f"data.max_pixels = {max_pixels} (raise it to read such images)")
            pil.load()  # decodes now, so a truncated file fails here
            rgb = pil.convert("RGB")
    except (_TooLargeError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot read image {path!r}: {e}") from e
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CorruptImageError(f"cannot read image {path!r}: empty image of shape {array.shape}")
    return array


class _TooLargeError(ValueError):
    """An image with more pixels than allowed (detected before decoding)."""


class FolderSource:
    """Random-access source of (image [H, W, 3] uint8, label int32) examples from an image folder.

    With on_corrupt="skip", an unreadable file is replaced by the next readable one in file order
    (deterministically, so resuming reproduces the stream), warned about once per process, and
    listed in `skipped`. `max_pixels` bounds the decoded size; `holdout` sets aside that
    fraction of the train images as every split without a folder of its own (see module doc).
    """

    def __init__(self, root: str, split: str = "train", on_corrupt: str = "fail",
                 max_pixels: int = MAX_PIXELS, holdout: float = 0.0):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt = {on_corrupt!r}: must be one of {', '.join(ON_CORRUPT)}")
        check_layout(root, holdout, split)
        own = split_root(root, split)
        train_root = split_root(root, "train")
        self.root = own or train_root
        self.on_corrupt = on_corrupt
        self.max_pixels = max_pixels
        names = scan(train_root)[2] if train_root != self.root else None
        self.paths, self.labels, self.class_names = scan(self.root, names)
        if holdout > 0 and self.root == train_root:  # the train split, or held-out images
            keep = [held_out(p, train_root, holdout) == (split != "train") for p in self.paths]
            self.paths = [p for p, k in zip(self.paths, keep) if k]
            self.labels = [label for label, k in zip(self.labels, keep) if k]
            if not self.paths:
                raise FolderLayoutError(
                    f"image folder {root!r}: data.folder_holdout = {holdout} leaves no image "
                    f"for the {split} split of {len(keep)}; "
                    + ("raise it" if split != "train" else "lower it"))
        self._skipped: dict[str, str] = {}

    @property
    def skipped(self) -> dict[str, str]:
        """Paths skipped so far as unreadable, with the reason."""
        return dict(self._skipped)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"image index {index} out of range [0, {len(self.paths)})")
        for offset in range(len(self.paths)):
            position = (index + offset) % len(self.paths)
            path = self.paths[position]
            known = _SKIPPED.reason(path) if self.on_corrupt == "skip" else None
            if known is not None:  # found unreadable before: not decoded again
                self._skipped[path] = known
                continue
            try:
                image = read_image(path, self.max_pixels)
            except CorruptImageError as e:
                if self.on_corrupt == "fail":
                    raise CorruptImageError(
                        f"{e} (set data.on_corrupt='skip' to skip unreadable files)"
                    ) from e
                reason = str(e.__cause__ or e)
                self._skipped[path] = reason
                if _SKIPPED.add(path, reason):
                    _logger.warning("skipping unreadable image %s: %s", path, reason)
                continue
            return {"image": image, "label": np.int32(self.labels[position])}
        raise CorruptImageError(f"no readable image in {self.root!r}: all {len(self)} files failed")

    def __repr__(self) -> str:
        return f"FolderSource(root={self.root!r}, images={len(self)}, classes={self.num_classes})"


def class_names(root: str) -> Sequence[str]:
    """Class names (sorted subfolder names of the train split) of the image folder at `root`."""
    check_layout(root, split="train")
    return scan(split_root(root, "train"))[2]
