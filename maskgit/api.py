"""A trained MaskGIT tokenizer in your own code: images -> token indices -> images.

    from maskgit.api import Tokenizer

    tokenizer = Tokenizer.from_workdir("runs/maskgit/fsq_tiny/tokenizer")
    images = tokenizer.load_images(["photo.jpg"])  # uint8 [1, S, S, 3], S = its training size
    indices = tokenizer.encode(images)             # int32 [1, S/f, S/f] in [0, codebook_size)
    restored = tokenizer.decode(indices)           # uint8 [1, S, S, 3]

The weights are the run's newest good checkpoint (its EMA weights when it kept them, as its
evaluation used), read without changing the workdir, so a run still training can be used.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from fsq_jax import images as image_lib
from fsq_jax import quantizers
from fsq_jax.quantizers import STATE_COLLECTION
from fsq_jax.train.frozen import load_frozen
from maskgit import tokenizer as tokenizer_lib


class Tokenizer:
    """The encoder, quantizer and decoder of a MaskGIT stage-I run.

    Args:
      config: the run's config (its `config.json`).
      variables: Flax variables of the tokenizer: `params` and the quantizer's state.
      batch_size: images per jitted call (bounds memory; each new size compiles once).
    """

    def __init__(self, config: ml_collections.ConfigDict, variables: dict[str, Any],
                 batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = config
        self.model = tokenizer_lib.build(config)
        self.variables = jax.device_put(variables)  # once, not with every call
        self.batch_size = batch_size

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike, batch_size: int = 64) -> Tokenizer:
        """The tokenizer trained in `workdir` (a `configs/maskgit/tokenizer.py` run).

        Raises:
          fsq_jax.config_lib.ConfigError (a ValueError): not a directory, no config.json or
            checkpoint, or not a tokenizer run.
        """
        stage = load_frozen(os.fspath(workdir), "Tokenizer.from_workdir")
        if not {"model", "quantizer", "discriminator"} <= set(stage.config):
            raise ValueError(f"{os.fspath(workdir)!r} is not a MaskGIT tokenizer run (its "
                             "config.json has no model / quantizer / discriminator sections)")
        return cls(stage.config, stage.variables("generator", (STATE_COLLECTION,)), batch_size)

    @property
    def image_size(self) -> int:
        """The resolution it was trained at (any multiple of `downsample_factor` works)."""
        return int(self.config.data.image_size)

    @property
    def downsample_factor(self) -> int:
        """Pixels per token along each side."""
        return tokenizer_lib.downsample_factor(self.config.model)

    @property
    def codebook_size(self) -> int:
        """Number of distinct token indices."""
        return quantizers.codebook_size(self.config.quantizer)

    def load_images(self, paths: Sequence[str | os.PathLike], size: int | None = None
                    ) -> np.ndarray:
        """Image files -> uint8 [N, size, size, 3], centre-cropped and resized (default size:
        `image_size`)."""
        return image_lib.load_images(paths, self.image_size if size is None else size)

    @functools.cached_property
    def _encode(self) -> Callable[..., jax.Array]:
        return jax.jit(lambda variables, images: self.model.apply(
            variables, image_lib.to_float(images), method="tokenize"))

    @functools.cached_property
    def _decode(self) -> Callable[..., jax.Array]:
        return jax.jit(lambda variables, indices: image_lib.to_uint8(self.model.apply(
            variables, indices, method="decode_tokens")))

    def _batched(self, fn: Callable[..., jax.Array], inputs: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(fn(self.variables, inputs[i:i + self.batch_size]))
                               for i in range(0, len(inputs), self.batch_size)])

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, 3] -> int32 token indices [N, H / f, W / f] (f =
        `downsample_factor`; H and W multiples of f; residual quantizers add a stage axis)."""
        images = np.asarray(images)
        factor = self.downsample_factor
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode: expected uint8 images [N, H, W, 3], got {images.dtype} "
                             f"{list(images.shape)}")
        if images.shape[1] % factor or images.shape[2] % factor or not images.shape[1]:
            raise ValueError(f"encode: image size {images.shape[1]}x{images.shape[2]} is not a "
                             f"multiple of the tokenizer's {factor} pixels per token")
        if not len(images):
            return np.zeros((0, images.shape[1] // factor, images.shape[2] // factor), np.int32)
        return self._batched(self._encode, images).astype(np.int32)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """int token indices [N, h, w] (residual quantizers: [N, h, w, stages], as `encode`
        gives) -> uint8 images [N, h * f, w * f, 3]."""
        indices = np.asarray(indices)
        if indices.ndim not in (3, 4) or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"decode: expected integer indices [N, h, w], got {indices.dtype} "
                             f"{list(indices.shape)}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(f"decode: indices must be in [0, {self.codebook_size}), got "
                             f"[{indices.min()}, {indices.max()}]")
        if not len(indices):
            factor = self.downsample_factor
            return np.zeros((0, indices.shape[1] * factor, indices.shape[2] * factor, 3),
                            np.uint8)
        return self._batched(self._decode, indices.astype(np.int32))

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """`decode(encode(images))`: what the tokenizer keeps of the images."""
        return self.decode(self.encode(images))
