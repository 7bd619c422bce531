"""ADM-format `.npz` image files, read and written in batches with bounded memory.

Generative-model tools exchange samples and reference batches as `.npz` files whose `arr_0` holds
uint8 images `[N, H, W, 3]` (openai/guided-diffusion's `image_sample.py` writes labels as `arr_1`;
its reference batches add `mu`, `sigma`, `mu_s`, `sigma_s`). 50k images at 256x256 are ~10 GB, so
neither side may hold the array whole. An `.npz` is a zip archive of `.npy` members, and
`np.load(..., mmap_mode="r")` cannot memory-map a member, so `NpzImages` parses the member's
`.npy` header itself and reads it batch by batch through the zip stream (stored or deflated),
as `evaluations/evaluator.py`'s `open_npz_array` does; `NpzImageWriter` streams batches into
the `arr_0.npy` member of a new archive.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"  # guided-diffusion's image_sample.py: np.savez(path, images, labels)


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Array names in an `.npz` (its `.npy` members without the suffix).

    Raises:
      FileNotFoundError / ValueError with one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: not an .npz file (not a zip archive: {error})") from None
    return [name[: -len(".npy")] for name in names if name.endswith(".npy")]


def _missing_key(path: Path, key: str, keys: list[str]) -> ValueError:
    listed = ", ".join(keys) if keys else "no arrays"
    return ValueError(f"{path}: missing key '{key}' (it has {listed}); ADM-format files hold "
                      f"the images as arr_0, e.g. np.savez(path, arr_0=images)")


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes from a (zip) stream, which may return fewer per call; fewer only at EOF."""
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran_order, dtype) of a `.npy` stream positioned at its start, leaving the
    stream at the data; None for header versions other than 1.0 and 2.0 (read whole instead)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    return None


class NpzImages:
    """uint8 images `[N, H, W, 3]` in one member of an `.npz`, validated on construction and
    streamed by `batches`.

    Args:
      path: the `.npz` file.
      key: the array's name (ADM: `arr_0`).
    Raises:
      FileNotFoundError, ValueError: one line naming the file and the problem (not a zip,
        missing key with the keys present, wrong dtype, wrong shape, no images).
    """

    def __init__(self, path: str | os.PathLike, key: str = IMAGES_KEY):
        self.path = Path(path)
        self.key = key
        keys = npz_keys(self.path)
        if key not in keys:
            raise _missing_key(self.path, key, keys)
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{key}.npy") as member:
            try:
                header = _read_npy_header(member)
            except ValueError as error:
                raise ValueError(f"{self.path}: '{key}' is not a valid .npy array ({error})") \
                    from None
            if header is None:  # rare header version: let numpy parse it (whole array)
                array = np.lib.format.read_array(member, allow_pickle=False)
                header = (array.shape, False, array.dtype)
        self.shape, _, dtype = header
        if dtype != np.uint8:
            raise ValueError(f"{self.path}: '{key}' must be uint8 images [N, H, W, 3] in "
                             f"[0, 255], got dtype {dtype}")
        if len(self.shape) != 4 or self.shape[-1] != 3:
            raise ValueError(f"{self.path}: '{key}' must be uint8 images [N, H, W, 3], got "
                             f"shape {tuple(self.shape)}")
        if self.shape[0] == 0:
            raise ValueError(f"{self.path}: '{key}' holds no images (shape {tuple(self.shape)})")
        if self.shape[1] < 2 or self.shape[2] < 2:
            raise ValueError(f"{self.path}: '{key}' images of {self.shape[1]}x{self.shape[2]} "
                             "pixels are too small")

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, 3)`."""
        return tuple(int(s) for s in self.shape[1:])

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield uint8 `[B, H, W, 3]` batches in order (the last may be smaller), each read from
        the archive as it is needed: memory stays O(batch_size * H * W * 3)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        image_bytes = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as member:
            header = _read_npy_header(member)
            if header is None or header[1]:
                # Fortran order (or an unusual header version) is not laid out image by image:
                # fall back to reading the member whole, as evaluator.py's MemoryNpzArrayReader.
                member.close()
                with archive.open(f"{self.key}.npy") as again:
                    array = np.lib.format.read_array(again, allow_pickle=False)
                for start in range(0, len(array), batch_size):
                    yield np.ascontiguousarray(array[start:start + batch_size])
                return
            for start in range(0, len(self), batch_size):
                count = min(batch_size, len(self) - start)
                data = _read_exact(member, count * image_bytes)
                if len(data) != count * image_bytes:
                    raise ValueError(f"{self.path}: '{self.key}' is truncated: image "
                                     f"{start + len(data) // image_bytes} of {len(self)} is "
                                     "missing")
                yield np.frombuffer(data, np.uint8).reshape(count, *self.shape[1:])


class NpzImageWriter:
    """Writes an ADM-format `.npz` batch by batch: `arr_0` uint8 `[N, H, W, 3]` with N known up
    front, then small extra arrays (e.g. labels as `arr_1`) on `close`.

    The file appears atomically at `path` on a successful `close` (the context manager calls
    it); on error nothing is left behind. Use as::

        with NpzImageWriter(path, num_images, (H, W, 3)) as writer:
            for batch in batches:
                writer.write(batch)
            writer.extras[LABELS_KEY] = labels
    """

    def __init__(self, path: str | os.PathLike, num_images: int,
                 image_shape: tuple[int, int, int]):
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}.")
        if len(image_shape) != 3 or image_shape[-1] != 3:
            raise ValueError(f"image_shape must be (H, W, 3), got {image_shape}.")
        self.path = Path(path)
        self.num_images = num_images
        self.image_shape = tuple(int(s) for s in image_shape)
        self.extras: dict[str, np.ndarray] = {}
        self.written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npz.tmp")
        os.close(fd)
        self._archive = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._archive.open(f"{IMAGES_KEY}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(
            self._member, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                           "fortran_order": False, "shape": (num_images, *self.image_shape)})

    def write(self, images: np.ndarray) -> None:
        """Append uint8 images `[B, H, W, 3]`."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            height, width, _ = self.image_shape
            raise ValueError(f"{self.path}: images must be uint8 [B, {height}, {width}, 3], "
                             f"got {images.dtype} {images.shape}")
        if self.written + len(images) > self.num_images:
            raise ValueError(f"{self.path}: {self.written + len(images)} images written, "
                             f"{self.num_images} declared")
        self._member.write(np.ascontiguousarray(images).tobytes())
        self.written += len(images)

    def close(self) -> None:
        """Finish the archive (with `extras`) and move it to `path`."""
        if self.written != self.num_images:
            self.abort()
            raise ValueError(f"{self.path}: {self.written} images written, {self.num_images} "
                             "declared")
        self._member.close()
        for key, value in self.extras.items():
            with self._archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
        self._archive.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        self._member.close()
        self._archive.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> NpzImageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
