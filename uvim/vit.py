"""Vision-transformer building blocks shared by the UViM stage-I autoencoder and stage-II model.

Pre-norm transformer blocks, learned position embeddings and patch (un)folding of dense maps,
written once so both stages (and their parameter counts) stay consistent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.linen as nn
import jax

from fsq_jax.config_lib import require

# What a block keeps for the backward pass (`model.remat`, `stage2.remat`): "none" keeps every
# activation; "dots" keeps the outputs of its dense layers and recomputes the attention weights,
# softmax, GELU and LayerNorms (no matmul is recomputed); "block" keeps only the block's input
# and recomputes the whole block (one extra forward pass). benchmarks/memory.py measures them.
Remat = Literal["none", "dots", "block"]
REMAT_POLICIES = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "block": jax.checkpoint_policies.nothing_saveable}


def remat_block(block: type[nn.Module], remat: str, static_argnums: tuple[int, ...]
                ) -> type[nn.Module]:
    """`block` rematerialised under the `remat` policy (itself for "none"); parameter names are
    unchanged. `static_argnums` index `__call__`'s arguments with 1 for the first after self."""
    if remat == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[remat], static_argnums=static_argnums)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """The ViT fields stage I (`model.*`) and stage II (`stage2.*`) share."""

    input_size: int
    patch_size: int
    width: int
    enc_depth: int
    dec_depth: int
    mlp_dim: int
    num_heads: int
    dropout: float
    remat: Remat  # what each block keeps for the backward pass (see `Remat`)

    def __post_init__(self):
        check_vit(self)


def check_vit(config: Any) -> None:
    """FieldError naming the first impossible ViT size of a stage-I or stage-II config."""
    for field in ("input_size", "patch_size", "width", "enc_depth", "dec_depth", "mlp_dim",
                  "num_heads"):
        require(getattr(config, field) > 0, field, "must be > 0")
    require(config.input_size % config.patch_size == 0, "patch_size",
            f"must divide input_size ({config.input_size})")
    require(config.width % config.num_heads == 0, "num_heads",
            f"must divide width ({config.width})")
    require(0.0 <= config.dropout < 1.0, "dropout", "must be in [0, 1)")


def to_patches(x: jax.Array, patch_size: int) -> jax.Array:
    """Folds a dense map into per-patch tensors.

    Args:
      x: [batch, height, width, channels].
      patch_size: side of a square patch; must divide height and width.

    Returns:
      [batch, num_patches, channels, patch_size**2], patches in row-major order.
    """
    b, h, w, c = x.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide the map size {h}x{w}")
    gh, gw = h // patch_size, w // patch_size
    x = x.reshape(b, gh, patch_size, gw, patch_size, c)
    x = x.transpose(0, 1, 3, 5, 2, 4)  # b gh gw c ph pw
    return x.reshape(b, gh * gw, c, patch_size * patch_size)


def from_patches(x: jax.Array, grid: tuple[int, int], patch_size: int) -> jax.Array:
    """Inverse of `to_patches`: [batch, gh*gw, channels, p*p] -> [batch, gh*p, gw*p, channels]."""
    b, n, c, pp = x.shape
    gh, gw = grid
    if n != gh * gw or pp != patch_size * patch_size:
        raise ValueError(f"cannot unfold {x.shape} into grid {grid} with patch {patch_size}")
    x = x.reshape(b, gh, gw, c, patch_size, patch_size)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # b gh ph gw pw c
    return x.reshape(b, gh * patch_size, gw * patch_size, c)


class PositionEmbedding(nn.Module):
    """Learned additive position embedding of shape [1, length, width]."""

    length: int
    width: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param(
            "embedding", nn.initializers.normal(stddev=0.02), (1, self.length, self.width)
        )


class PatchEmbedding(nn.Module):
    """Non-overlapping patch projection of an image: [B, H, W, C] -> [B, (H/p)*(W/p), width]."""

    width: int
    patch_size: int

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="conv")(image)
        return x.reshape(x.shape[0], -1, self.width)


class MlpBlock(nn.Module):
    """Transformer MLP: Dense(mlp_dim) -> GELU -> Dense(width)."""

    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim, kernel_init=nn.initializers.xavier_uniform(),
                     bias_init=nn.initializers.normal(stddev=1e-6))(x)
        x = nn.gelu(x)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return nn.Dense(width, kernel_init=nn.initializers.xavier_uniform(),
                        bias_init=nn.initializers.normal(stddev=1e-6))(x)


class EncoderBlock(nn.Module):
    """Pre-norm self-attention block (bidirectional): [B, N, width] -> [B, N, width]."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        y = nn.LayerNorm(name="norm_attention")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            dropout_rate=self.dropout, deterministic=deterministic, name="attention")(y, y)
        x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(name="norm_mlp")(x)
        y = MlpBlock(self.mlp_dim, self.dropout, name="mlp")(y, deterministic)
        return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)


class Encoder(nn.Module):
    """Stack of `depth` encoder blocks and a final LayerNorm: [B, N, width] -> [B, N, width]."""

    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    remat: str = "none"  # `Remat`

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        block = remat_block(EncoderBlock, self.remat, static_argnums=(2,))
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.dropout, name=f"block_{i}")(
                x, deterministic)
        return nn.LayerNorm(name="norm")(x)


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention, cross-attention to the encoder, then MLP.

    With `decode=True` the self-attention keeps a key/value cache in the "cache" collection and
    takes one token at a time, so autoregressive sampling costs O(length) per step.
    `attention_bias=False` drops the biases of both attentions' projections, as big_vision's
    UViM decoder (models/proj/uvim/vtt.py EncoderDecoderBlock: use_bias=False).
    """

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    decode: bool = False
    attention_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, encoded: jax.Array, mask: jax.Array | None,
                 deterministic: bool = True) -> jax.Array:
        """x: [B, L, width] (L = 1 when decoding), encoded: [B, N, width]."""
        y = nn.LayerNorm(name="norm_self_attention")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            dropout_rate=self.dropout, deterministic=deterministic, decode=self.decode,
            use_bias=self.attention_bias, name="self_attention")(y, y, mask=mask)
        x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(name="norm_cross_attention")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            dropout_rate=self.dropout, deterministic=deterministic,
            use_bias=self.attention_bias, name="cross_attention")(y, encoded)
        x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(name="norm_mlp")(x)
        y = MlpBlock(self.mlp_dim, self.dropout, name="mlp")(y, deterministic)
        return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)


def resize_tokens(x: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Bilinearly resizes a square token grid: [B, h*w, C] -> [B, grid[0]*grid[1], C]."""
    b, n, c = x.shape
    side = round(n**0.5)
    if side * side != n:
        raise ValueError(f"token count {n} is not a square grid")
    if (side, side) == tuple(grid):
        return x
    x = x.reshape(b, side, side, c)
    x = jax.image.resize(x, (b, grid[0], grid[1], c), method="linear")
    return x.reshape(b, grid[0] * grid[1], c)
