"""UViM stage I: an autoencoder of the task output with a discrete bottleneck and image context.

The "oracle" encoder reads the task output (plus the image as context), compresses it to
`code_len` tokens through any fsq_jax quantizer (FSQ or VQ: the one swap point), and the decoder
reconstructs the output from the code plus the image context (Kolesnikov et al. 2022, Sec. 3).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fsq_jax import quantizers
from fsq_jax.config_lib import require
from fsq_jax.quantizers import QuantizerOutput
from uvim.vit import (
    Encoder,
    PatchEmbedding,
    PositionEmbedding,
    ViTConfig,
    from_patches,
    resize_tokens,
    to_patches,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage1Config(ViTConfig):
    """`model.*` of UViM stage I (the values are in configs/uvim/*.py)."""

    code_len: int  # tokens; a square grid, bilinearly resized from the patch grid
    with_context: bool  # False: the "no image context" ablation
    code_dropout: Literal["none", "random"]  # UViM's random code dropout

    def __post_init__(self):
        super().__post_init__()
        side = round(self.code_len**0.5)
        require(side * side == self.code_len, "code_len", "must be a square number")


class Stage1Model(nn.Module):
    """Oracle encoder -> quantizer -> decoder with image context.

    Attributes:
      targets: `((name, channels), ...)` of the task output, e.g. `(("depth", 256),)`.
      quantizer: the quantizer module (`fsq_jax.quantizers.build(config.quantizer)`).
      code_dim: the quantizer's input dimension (`fsq_jax.quantizers.code_dim`).
    """

    targets: tuple[tuple[str, int], ...]
    quantizer: nn.Module
    code_dim: int
    input_size: int
    patch_size: int
    width: int
    enc_depth: int
    dec_depth: int
    mlp_dim: int
    num_heads: int
    dropout: float
    code_len: int
    with_context: bool
    code_dropout: str
    remat: str = "none"

    @property
    def grid(self) -> tuple[int, int]:
        side = self.input_size // self.patch_size
        return side, side

    @property
    def code_grid(self) -> tuple[int, int]:
        side = round(self.code_len**0.5)
        return side, side

    def setup(self):
        pixels = self.patch_size**2
        self.embed_targets = {
            name: nn.DenseGeneral(self.width, axis=(-2, -1), name=f"embed_{name}")
            for name, _ in self.targets
        }
        self.heads = {
            name: nn.DenseGeneral((channels, pixels), kernel_init=nn.initializers.zeros,
                                  name=f"head_{name}")
            for name, channels in self.targets
        }
        if self.with_context:
            self.context_encoder = PatchEmbedding(self.width, self.patch_size)
            self.context_decoder = PatchEmbedding(self.width, self.patch_size)
        n = self.grid[0] * self.grid[1]
        self.posemb_encoder = PositionEmbedding(n, self.width)
        self.posemb_decoder = PositionEmbedding(n, self.width)
        self.encoder = Encoder(self.enc_depth, self.num_heads, self.mlp_dim, self.dropout,
                               remat=self.remat)
        self.decoder = Encoder(self.dec_depth, self.num_heads, self.mlp_dim, self.dropout,
                               remat=self.remat)
        self.to_code = nn.Dense(self.code_dim, name="to_code")
        self.from_code = nn.Dense(self.width, name="from_code")

    def encode(self, targets: dict[str, jax.Array], context: jax.Array | None, *,
               train: bool = False) -> QuantizerOutput:
        """Task output -> quantized code.

        Args:
          targets: `{name: [B, H, W, channels]}` float.
          context: [B, H, W, 3] image in [-1, 1] (ignored without context).

        Returns:
          QuantizerOutput with `quantized` [B, code_len, code_dim], `indices` [B, code_len].
        """
        x = sum(self.embed_targets[name](to_patches(targets[name], self.patch_size))
                for name, _ in self.targets)
        if self.with_context:
            x = x + self.context_encoder(context)
        x = self.encoder(x + self.posemb_encoder(), deterministic=not train)
        x = resize_tokens(x, self.code_grid)
        return self.quantizer(self.to_code(x), train=train)

    def decode(self, codes: jax.Array, context: jax.Array | None, *,
               train: bool = False) -> dict[str, jax.Array]:
        """Quantized code [B, code_len, code_dim] (+ context) -> `{name: logits [B, H, W, C]}`."""
        if train and self.code_dropout == "random":
            codes = self._drop_codes(codes)
        x = resize_tokens(self.from_code(codes), self.grid)
        if self.with_context:
            x = x + self.context_decoder(context)
        x = self.decoder(x + self.posemb_decoder(), deterministic=not train)
        return {name: from_patches(self.heads[name](x), self.grid, self.patch_size)
                for name, _ in self.targets}

    def _drop_codes(self, codes: jax.Array) -> jax.Array:
        """UViM's random code dropout: zero a random number of random tokens per example."""
        b, n, _ = codes.shape
        importance = jnp.linspace(1.0, 0.0, n + 2)[1:-1]
        threshold = jax.random.uniform(self.make_rng("dropout"), (b,))
        keep = importance[None, :] > threshold[:, None]
        keep = jax.random.permutation(self.make_rng("dropout"), keep, axis=1, independent=True)
        return codes * keep[:, :, None].astype(codes.dtype)

    def decode_indices(self, indices: jax.Array, context: jax.Array | None) -> dict[str, jax.Array]:
        """Token indices [B, code_len] (e.g. predicted by stage II) -> output logits."""
        codes = self.quantizer.indices_to_quantized(indices)
        return self.decode(codes, context, train=False)

    def __call__(self, targets: dict[str, jax.Array], context: jax.Array | None, *,
                 train: bool = False) -> tuple[dict[str, jax.Array], QuantizerOutput]:
        """Reconstruction logits `{name: [B, H, W, C]}` and the quantizer output."""
        out = self.encode(targets, context, train=train)
        return self.decode(out.quantized, context, train=train), out


def build(model: ml_collections.ConfigDict, quantizer: Any,
          targets: dict[str, int]) -> Stage1Model:
    """Stage-I model from the `model` and `quantizer` configs and the task's target channels."""
    return Stage1Model(
        targets=tuple(targets.items()),
        quantizer=quantizers.build(quantizer),
        code_dim=quantizers.code_dim(quantizer),
        input_size=int(model.input_size), patch_size=int(model.patch_size),
        width=int(model.width), enc_depth=int(model.enc_depth), dec_depth=int(model.dec_depth),
        mlp_dim=int(model.mlp_dim), num_heads=int(model.num_heads),
        dropout=float(model.dropout), code_len=int(model.code_len),
        with_context=bool(model.with_context), code_dropout=str(model.code_dropout),
        remat=str(model.get("remat", "none")),  # absent from runs saved before the field
    )


def init_variables(module: Stage1Model, rng: jax.Array, batch_size: int = 1) -> dict[str, Any]:
    """Initial variables (params + quantizer state) from dummy inputs of the right shapes."""
    size = module.input_size
    targets = {name: jnp.zeros((batch_size, size, size, c)) for name, c in module.targets}
    context = jnp.zeros((batch_size, size, size, 3))
    rngs = dict(zip(("params", "dropout", quantizers.RNG_STREAM), jax.random.split(rng, 3)))
    return module.init(rngs, targets, context, train=False)


