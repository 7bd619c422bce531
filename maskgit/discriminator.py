"""StyleGAN2-style residual discriminator, as MaskGIT's VQGAN uses for its adversarial loss.

Residual blocks halve the resolution (blur then subsample) down to 4x4, then two dense layers give
one logit per image. Widths follow StyleGAN's table (512 at <= 32 px, halving above), scaled by
`channel_multiplier` and capped at `max_filters`, so a tiny preset can shrink it.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fsq_jax.config_lib import require

_BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
_DEFAULT_INIT = nn.initializers.xavier_uniform()


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    """`discriminator.*`: StyleGAN's width table scaled and capped (MaskGIT's at 256x256)."""

    channel_multiplier: float  # StyleGAN width table x this
    max_filters: int
    blur_resample: bool  # False: 2x2 average pooling
    leaky_slope: float

    def __post_init__(self):
        require(self.channel_multiplier > 0, "channel_multiplier", "must be > 0")
        require(self.max_filters >= 1, "max_filters", "must be >= 1")


def check_image_size(image_size: int) -> None:
    """ValueError naming `data.image_size` unless it is a power of two >= 8."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(
            f"data.image_size = {image_size}: the discriminator needs a power of two >= 8"
        )


def filters_at(config: ml_collections.ConfigDict, resolution: int) -> int:
    """StyleGAN's width at a resolution: 64 at 256, doubling per halving, up to max_filters."""
    width = round(16384 * config.channel_multiplier / resolution)
    return max(1, min(config.max_filters, width))


def blur_downsample(x: jax.Array) -> jax.Array:
    """[1,3,3,1]^2 / 64 blur then stride-2 subsampling (zero padding 1), per channel.

    Written as separable strided slices instead of a depthwise convolution, which XLA:CPU runs
    (and differentiates twice, for R1) very slowly. x: [B, H, W, C] -> [B, H/2, W/2, C].
    """
    taps = np.asarray(_BLUR_TAPS, np.float32) / sum(_BLUR_TAPS)
    height, width = x.shape[1], x.shape[2]
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = sum(float(t) * x[:, a:a + height:2] for a, t in enumerate(taps))
    return sum(float(t) * x[:, :, a:a + width:2] for a, t in enumerate(taps))


def blur_downsample_reference(x: jax.Array) -> jax.Array:
    """The same blur as one depthwise convolution (for tests)."""
    taps = np.asarray(_BLUR_TAPS, np.float32)
    kernel = np.outer(taps, taps)
    kernel /= kernel.sum()
    channels = x.shape[-1]
    kernel = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, channels)), x.dtype)
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(2, 2), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
    )


class DiscriminatorBlock(nn.Module):
    """conv3x3, act, downsample, conv3x3, act; 1x1-conv shortcut on the downsampled input; / sqrt 2.

    x: [B, H, W, C] -> [B, H/2, W/2, filters]
    """

    filters: int
    blur_resample: bool
    leaky_slope: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = lambda y: nn.leaky_relu(y, self.leaky_slope)
        down = blur_downsample if self.blur_resample else (
            lambda y: nn.avg_pool(y, (2, 2), strides=(2, 2))
        )
        residual = x
        x = act(nn.Conv(x.shape[-1], (3, 3), kernel_init=_DEFAULT_INIT)(x))
        x = down(x)
        residual = nn.Conv(self.filters, (1, 1), use_bias=False, kernel_init=_DEFAULT_INIT)(
            down(residual)
        )
        x = act(nn.Conv(self.filters, (3, 3), kernel_init=_DEFAULT_INIT)(x))
        return (x + residual) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """images: [B, H, W, 3] in [-1, 1] (H = W a power of two >= 8) -> logits [B]."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        config = self.config
        size = x.shape[1]
        check_image_size(size)
        act = lambda y: nn.leaky_relu(y, config.leaky_slope)
        x = act(nn.Conv(filters_at(config, size), (3, 3), kernel_init=_DEFAULT_INIT)(x))
        resolution = size
        while resolution > 4:
            resolution //= 2
            x = DiscriminatorBlock(
                filters_at(config, resolution), config.blur_resample, config.leaky_slope
            )(x)
        x = act(nn.Conv(filters_at(config, 4), (3, 3), kernel_init=_DEFAULT_INIT)(x))
        x = x.reshape((x.shape[0], -1))
        x = act(nn.Dense(filters_at(config, 4), kernel_init=_DEFAULT_INIT)(x))
        return nn.Dense(1, kernel_init=_DEFAULT_INIT)(x)[:, 0]
