"""MaskGIT's VQGAN tokenizer with a swappable quantizer (FSQ, VQ or any `fsq_jax.quantizers`).

A convolutional encoder (GroupNorm, swish, no attention) maps an image to a grid of latents, a
dense projection brings them to the quantizer's dimension, and the decoder maps the (projected
back) codes to pixels. Which quantizer sits in the middle is purely a config choice.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fsq_jax import quantizers
from fsq_jax.config_lib import require
from fsq_jax.dtypes import DTYPES, DTypeName
from fsq_jax.quantizers.base import QuantizerOutput
from maskgit.transformer import REMAT_POLICIES

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "swish": nn.swish,
    "relu": nn.relu,
    "gelu": nn.gelu,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerModelConfig:
    """`model.*` of the tokenizer: MaskGIT's VQGAN encoder / decoder (configs/maskgit/tokenizer.py
    holds the values; google-research/maskgit `configs/vqgan_config.py`)."""

    filters: int  # base width; level i has filters * channel_multipliers[i]
    channel_multipliers: tuple[int, ...]  # len-1 downsamplings: (1, 1, 2, 2, 4) gives 256 -> 16
    num_res_blocks: int
    embedding_dim: int  # encoder output width, projected to the quantizer's dim
    norm_groups: int
    activation: Literal["swish", "relu", "gelu"]
    conv_downsample: bool  # False: 2x2 average pooling as MaskGIT
    # Where a channel-changing ResBlock's 1x1 shortcut conv acts: "input" (the standard residual
    # projection of the block input) or "output" (MaskGIT's released code and checkpoints: the
    # conv is applied to the block's own output, the input is dropped; docs/fidelity.md).
    shortcut: Literal["input", "output"]
    # True: dense projections encoder -> quantizer dim and back (needed when the code dim differs
    # from embedding_dim, e.g. FSQ); False: the quantizer works on the encoder output itself, as
    # MaskGIT's VQ (google-research/maskgit nets/vqgan_tokenizer.py VQVAE).
    project_codes: bool
    # Pixel range the encoder sees and the decoder produces: "symmetric" [-1, 1], or "unit"
    # [0, 1] (MaskGIT's released tokenizer: inference.py feeds images / 255). The module's own
    # interface stays [-1, 1] either way.
    image_range: Literal["symmetric", "unit"]
    dtype: DTypeName  # compute dtype; params stay float32
    # What training keeps for the backward pass: "none" every activation; "dots" only the
    # outputs of convolutions and dense layers (GroupNorm, swish, the quantizer recomputed from
    # them, fused into the backward convolutions); "block" only each encoder / decoder
    # ResBlock's input (the block's forward pass runs again in the backward pass). The same
    # parameters and math either way; benchmarks/memory.py measures the memory.
    remat: Literal["none", "dots", "block"]

    def __post_init__(self):
        require(self.filters >= 1, "filters", "must be >= 1")
        require(len(self.channel_multipliers) >= 1 and min(self.channel_multipliers) >= 1,
                "channel_multipliers", "need >= 1 entries, each >= 1")
        require(self.num_res_blocks >= 0, "num_res_blocks", "must be >= 0")
        require(self.embedding_dim >= 1, "embedding_dim", "must be >= 1")
        for mult in self.channel_multipliers:
            require((self.filters * mult) % self.norm_groups == 0, "norm_groups",
                    f"must divide every level width (filters * multiplier = "
                    f"{self.filters * mult})")


def downsample_factor(config: ml_collections.ConfigDict) -> int:
    """Image pixels per token along each axis: 2 ** (levels - 1)."""
    return 2 ** (len(config.channel_multipliers) - 1)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, act, conv3x3) x 2, 1x1-conv shortcut if needed.

    When the width changes, `shortcut="input"` adds conv1x1(input) (the usual projection);
    `shortcut="output"` adds conv1x1(block output) instead, so that block computes
    y + conv1x1(y) with no path from its input: what google-research/maskgit
    `nets/vqgan_tokenizer.py` ResBlock does and its checkpoints hold (a [1, 1, filters, filters]
    kernel). The shortcut conv is created last either way (Flax name `Conv_2`).

    x: [batch, height, width, channels] -> [batch, height, width, filters]
    """

    filters: int
    norm_groups: int
    activation: Callable[[jax.Array], jax.Array]
    dtype: Any = jnp.float32
    shortcut: str = "input"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        for _ in range(2):
            x = nn.GroupNorm(num_groups=self.norm_groups, dtype=self.dtype)(x)
            x = self.activation(x)
            x = nn.Conv(self.filters, (3, 3), use_bias=False, dtype=self.dtype)(x)
        if residual.shape[-1] != self.filters:
            source = x if self.shortcut == "output" else residual
            residual = nn.Conv(self.filters, (1, 1), use_bias=False, dtype=self.dtype)(source)
        return x + residual


def _groups(config: ml_collections.ConfigDict, width: int) -> int:
    return min(config.norm_groups, width)


def res_block_class(config: ml_collections.ConfigDict) -> type[nn.Module]:
    """`ResBlock`, rematerialised when `model.remat = "block"` (only its input kept for the
    backward pass; the policy table is the MaskGIT transformer's `REMAT_POLICIES`). Callers
    name the blocks `ResBlock_<i>` so the parameter tree matches the plain `ResBlock`'s."""
    if config.get("remat", "none") != "block":  # absent from runs saved before the field
        return ResBlock
    return nn.remat(ResBlock, policy=REMAT_POLICIES["block"])


def _numbered_blocks(config: ml_collections.ConfigDict, act: Callable[[jax.Array], jax.Array],
                     dtype: Any) -> Callable[[int], nn.Module]:
    """`filters -> ResBlock` for one parent module, named `ResBlock_0, ResBlock_1, ...` in call
    order: Flax's own names for unnamed `ResBlock`s, kept when the class is rematerialised (its
    lifted class would otherwise be named `CheckpointResBlock_<i>`)."""
    cls = res_block_class(config)
    count = itertools.count()
    return lambda filters: cls(filters, _groups(config, filters), act, dtype, config.shortcut,
                               name=f"ResBlock_{next(count)}")


class Encoder(nn.Module):
    """Image to latent grid.

    images: [batch, H, W, 3] in [-1, 1] -> [batch, H / f, W / f, embedding_dim], f = 2**(levels-1).
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        config = self.config
        dtype = DTYPES[config.dtype]
        act = ACTIVATIONS[config.activation]
        x = nn.Conv(config.filters, (3, 3), use_bias=False, dtype=dtype)(x.astype(dtype))
        levels = len(config.channel_multipliers)
        filters = config.filters
        block = _numbered_blocks(config, act, dtype)
        for level, mult in enumerate(config.channel_multipliers):
            filters = config.filters * mult
            for _ in range(config.num_res_blocks):
                x = block(filters)(x)
            if level < levels - 1:
                if config.conv_downsample:
                    x = nn.Conv(filters, (4, 4), strides=(2, 2), dtype=dtype)(x)
                else:
                    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        for _ in range(config.num_res_blocks):
            x = block(filters)(x)
        x = nn.GroupNorm(num_groups=_groups(config, filters), dtype=dtype)(x)
        x = act(x)
        return nn.Conv(config.embedding_dim, (1, 1), dtype=dtype)(x)


class Decoder(nn.Module):
    """Latent grid to image (mirror of the encoder, nearest upsampling + conv).

    x: [batch, h, w, embedding_dim] -> [batch, h * f, w * f, 3] (unbounded; ~[-1, 1] once trained)
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        config = self.config
        dtype = DTYPES[config.dtype]
        act = ACTIVATIONS[config.activation]
        filters = config.filters * config.channel_multipliers[-1]
        x = nn.Conv(filters, (3, 3), dtype=dtype)(x.astype(dtype))
        block = _numbered_blocks(config, act, dtype)
        for _ in range(config.num_res_blocks):
            x = block(filters)(x)
        for level in reversed(range(len(config.channel_multipliers))):
            filters = config.filters * config.channel_multipliers[level]
            for _ in range(config.num_res_blocks):
                x = block(filters)(x)
            if level > 0:
                x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
                x = nn.Conv(filters, (3, 3), dtype=dtype)(x)
        x = nn.GroupNorm(num_groups=_groups(config, filters), dtype=dtype)(x)
        x = act(x)
        return nn.Conv(3, (3, 3), dtype=dtype)(x).astype(jnp.float32)


def check_code_dim(config: ml_collections.ConfigDict, code_dim: int) -> None:
    """ValueError naming `model.project_codes` when the quantizer cannot take the encoder output
    as it is (without projections its code dim must be `model.embedding_dim`)."""
    if not config.project_codes and code_dim != config.embedding_dim:
        raise ValueError(
            f"model.project_codes = False: the quantizer's code dim ({code_dim}) must equal "
            f"model.embedding_dim ({config.embedding_dim}); set model.project_codes = True")


class Tokenizer(nn.Module):
    """Encoder -> [dense to code_dim] -> quantizer -> [dense to embedding_dim] -> decoder.

    The dense projections exist when `model.project_codes` (else the quantizer reads the encoder
    output directly, as MaskGIT's VQ). With `model.image_range = "unit"` the encoder and decoder
    work on [0, 1] pixels; images in and out of this module are [-1, 1] regardless.

    Attributes:
      config: `model.*` fields (see `TokenizerModelConfig`).
      quantizer_config: any `fsq_jax.quantizers` config; the quantizer is built from it.
    """

    config: ml_collections.ConfigDict
    quantizer_config: ml_collections.ConfigDict

    def setup(self) -> None:
        dim = quantizers.code_dim(self.quantizer_config)
        check_code_dim(self.config, dim)
        self.encoder = Encoder(self.config)
        self.quantizer = quantizers.build(self.quantizer_config)
        self.decoder = Decoder(self.config)
        if self.config.project_codes:
            self.project_in = nn.Dense(dim, dtype=jnp.float32, name="project_in")
            self.project_out = nn.Dense(
                self.config.embedding_dim, dtype=DTYPES[self.config.dtype], name="project_out"
            )

    def encode(self, images: jax.Array, train: bool = False) -> QuantizerOutput:
        """images: [batch, H, W, 3] in [-1, 1] -> QuantizerOutput with quantized [batch, h, w, d]
        (d = code_dim) and indices [batch, h, w] (int32)."""
        if self.config.image_range == "unit":
            images = (images + 1.0) * 0.5
        z = self.encoder(images).astype(jnp.float32)
        if self.config.project_codes:
            z = self.project_in(z)
        return self.quantizer(z, train=train)

    def decode(self, quantized: jax.Array) -> jax.Array:
        """quantized: [batch, h, w, d] -> images [batch, H, W, 3] (float32, ~[-1, 1])."""
        if self.config.project_codes:
            quantized = self.project_out(quantized)
        images = self.decoder(quantized)
        return images * 2.0 - 1.0 if self.config.image_range == "unit" else images

    def tokenize(self, images: jax.Array) -> jax.Array:
        """images: [batch, H, W, 3] in [-1, 1] -> int32 tokens [batch, h, w] (eval mode)."""
        return self.encode(images, train=False).indices

    def decode_tokens(self, tokens: jax.Array) -> jax.Array:
        """tokens: int32 [batch, h, w] -> images [batch, H, W, 3] (float32, ~[-1, 1])."""
        return self.decode(self.quantizer.indices_to_quantized(tokens))

    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
        """images: [batch, H, W, 3] in [-1, 1] -> (reconstruction, QuantizerOutput)."""
        if self.config.get("remat", "none") == "dots":  # absent from runs saved before it
            return nn.checkpoint(_autoencode, policy=save_convs_and_dots,
                                 static_argnums=(2,))(self, images, train)
        return _autoencode(self, images, train)


def save_convs_and_dots(primitive: Any, *args: Any, **params: Any) -> bool:
    """A `jax.checkpoint` policy: keep the outputs of convolutions and matmuls only."""
    del args, params
    return primitive in (jax.lax.conv_general_dilated_p, jax.lax.dot_general_p)


def _autoencode(model: Tokenizer, images: jax.Array, train: bool
                ) -> tuple[jax.Array, QuantizerOutput]:
    out = model.encode(images, train=train)
    return model.decode(out.quantized), out


def build(config: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer of an experiment config (reads `config.model` and `config.quantizer`)."""
    return Tokenizer(config.model, config.quantizer)


def token_grid(config: ml_collections.ConfigDict, image_size: int) -> tuple[int, int]:
    """Token grid (h, w) for square images of `image_size` pixels; checks divisibility."""
    factor = downsample_factor(config)
    if image_size % factor:
        raise ValueError(
            f"data.image_size = {image_size}: must be a multiple of the tokenizer's downsampling "
            f"factor {factor} (2 ** (len(model.channel_multipliers) - 1))"
        )
    return image_size // factor, image_size // factor


__all__: Sequence[str] = (
    "Decoder",
    "Encoder",
    "ResBlock",
    "Tokenizer",
    "TokenizerModelConfig",
    "build",
    "check_code_dim",
    "downsample_factor",
    "res_block_class",
    "token_grid",
)
