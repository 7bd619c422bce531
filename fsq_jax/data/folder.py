"""Image-folder source: `folder:/path` with one subfolder per class, or just images.

Lets a user train on their own images without converting them. Files are found once, sorted, and
read lazily by index (random access, so the pipeline stays deterministic and resumable). A corrupt
or unreadable file is never turned into a blank image: it fails with its path, or is skipped and
reported (logged, and listed in `FolderSource.skipped`), per `on_corrupt`.
"""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Sequence

import numpy as np
from PIL import Image

from fsq_jax.config_lib.sections import OnCorrupt
from fsq_jax.data.errors import DataError

ON_CORRUPT = typing.get_args(OnCorrupt)
# Split subfolders recognised under the root, e.g. root/train/<class>/x.jpg.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}

_logger = logging.getLogger(__name__)


class CorruptImageError(DataError):
    """An image file could not be read or decoded."""


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions PIL can open (".jpg", ".png", ".webp", ...)."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _images_in(directory: str, extensions: frozenset[str]) -> list[str]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                paths.append(os.path.join(dirpath, name))
    return paths


def split_root(root: str, split: str) -> str:
    """The folder holding `split`: root/<split> (root/val for validation) if it exists, else root.

    A folder without split subfolders serves every split (the same images).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    for name in SPLIT_FOLDERS.get(split, (split,)):
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    return root


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
    entries = sorted(os.listdir(directory))
    classes = [e for e in entries if os.path.isdir(os.path.join(directory, e))
               and not e.startswith(".")]
    loose = [e for e in entries if os.path.isfile(os.path.join(directory, e))
             and os.path.splitext(e)[1].lower() in extensions and not e.startswith(".")]
    if classes and loose:
        raise ValueError(
            f"image folder {directory!r} mixes class subfolders ({', '.join(classes[:3])}, ...) "
            f"with loose images ({loose[0]}, ...): put every image in a class subfolder"
        )
    paths: list[str] = []
    labels: list[int] = []
    if classes:
        names = list(class_names) if class_names is not None else classes
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise ValueError(f"image folder {directory!r} has classes missing from the train "
                             f"split: {', '.join(unknown[:5])}")
        for name in classes:
            found = _images_in(os.path.join(directory, name), extensions)
            paths += found
            labels += [names.index(name)] * len(found)
    else:
        paths = [os.path.join(directory, e) for e in loose]
        labels = [0] * len(paths)
        names = [os.path.basename(os.path.normpath(directory))]
    if not paths:
        raise ValueError(
            f"image folder {directory!r} holds no images (looked for "
            f"{', '.join(sorted(extensions)[:8])}, ... files)"
        )
    return paths, labels, names


def read_image(path: str) -> np.ndarray:
    """Decodes the image at `path` as uint8 RGB [H, W, 3]; raises CorruptImageError naming it."""
    try:
        with Image.open(path) as pil:
            pil.load()  # decodes now, so a truncated file fails here
            rgb = pil.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot read image {path!r}: {e}") from e
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CorruptImageError(f"cannot read image {path!r}: empty image of shape {array.shape}")
    return array


class FolderSource:
    """Random-access source of (image [H, W, 3] uint8, label int32) examples from an image folder.

    With on_corrupt="skip", an unreadable file is replaced by the next readable one in file order
    (deterministically, so resuming reproduces the stream), logged once, and listed in `skipped`.
    """

    def __init__(self, root: str, split: str = "train", on_corrupt: str = "fail"):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt = {on_corrupt!r}: must be one of {', '.join(ON_CORRUPT)}")
        self.root = split_root(root, split)
        self.on_corrupt = on_corrupt
        train_root = split_root(root, "train")
        names = scan(train_root)[2] if train_root != self.root else None
        self.paths, self.labels, self.class_names = scan(self.root, names)
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
            try:
                image = read_image(path)
            except CorruptImageError as e:
                if self.on_corrupt == "fail":
                    raise CorruptImageError(
                        f"{e} (set data.on_corrupt='skip' to skip unreadable files)"
                    ) from e
                if path not in self._skipped:
                    self._skipped[path] = str(e.__cause__ or e)
                    _logger.warning("skipping unreadable image %s: %s", path, e.__cause__ or e)
                continue
            return {"image": image, "label": np.int32(self.labels[position])}
        raise CorruptImageError(f"no readable image in {self.root!r}: all {len(self)} files failed")

    def __repr__(self) -> str:
        return f"FolderSource(root={self.root!r}, images={len(self)}, classes={self.num_classes})"


def class_names(root: str) -> Sequence[str]:
    """Class names (sorted subfolder names of the train split) of the image folder at `root`."""
    return scan(split_root(root, "train"))[2]
