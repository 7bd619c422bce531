"""MaskGIT's bidirectional transformer over the token grid, conditioned on a class token.

BERT-style (post-LayerNorm) encoder: token + learned position embeddings, full self-attention,
and an MLM head whose output layer is tied to the token embedding. The vocabulary holds the image
codes, one mask token and the class tokens; the head predicts image codes only. The
unconditional input of classifier-free guidance puts the mask token in the class position (FSQ
paper Sec. 4.3: "we replace 10% of the class labels with the MASK token"), so there is no extra
"null" class.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fsq_jax.config_lib import require
from fsq_jax.dtypes import DTYPES, DTypeName

LAYERNORM_EPS = 1e-12  # BERT's, as MaskGIT


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerModelConfig:
    """`model.*` of the stage-II transformer (google-research/maskgit
    `configs/maskgit_class_cond_config.py` for the values in configs/maskgit/transformer.py)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float
    # Dropout on the attention weights (softmax output), one mask shared by the batch and the
    # heads as flax's dot_product_attention(broadcast_dropout=True), which MaskGIT's
    # nets/maskgit_transformer.py calls with attention_probs_dropout_prob = dropout_rate.
    attention_dropout: float
    initializer_range: float
    dtype: DTypeName  # compute dtype; params stay float32
    # Attention kernel: "xla" (any backend) or "cudnn" (fused flash attention; GPU with
    # bfloat16 only). `benchmarks/maskgit.py --variants attention=cudnn` compares them.
    attention: Literal["xla", "cudnn"]
    # Dropout bits: "threefry" (jax's default) or "rbg" (XLA's RngBitGenerator: on GPUs several
    # times cheaper to draw; the dropout masks differ, their law does not).
    dropout_rng: Literal["threefry", "rbg"]
    # What each layer keeps for the backward pass: "none" everything; "dots" the dense layers'
    # outputs (attention weights, softmax, GELU, LayerNorms recomputed); "block" only the
    # layer's input (one extra forward pass). benchmarks/memory.py measures them.
    remat: Literal["none", "dots", "block"]

    def __post_init__(self):
        for field in ("num_layers", "hidden_size", "num_heads", "mlp_dim"):
            require(getattr(self, field) >= 1, field, "must be >= 1")
        require(self.hidden_size % self.num_heads == 0, "num_heads",
                f"must divide model.hidden_size ({self.hidden_size})")
        require(0.0 <= self.dropout_rate < 1.0, "dropout_rate", "must be in [0, 1)")
        require(0.0 <= self.attention_dropout < 1.0, "attention_dropout", "must be in [0, 1)")
        require(self.attention != "cudnn" or self.dtype == "bfloat16", "attention",
                "'cudnn' needs model.dtype = 'bfloat16'")
        require(self.attention != "cudnn" or self.attention_dropout == 0.0, "attention_dropout",
                "the fused 'cudnn' attention has no attention-weight dropout: set "
                "model.attention_dropout = 0 with model.attention = 'cudnn'")


def attention_implementation(config: ml_collections.ConfigDict) -> str | None:
    """The `jax.nn.dot_product_attention` implementation for `model.attention` (None: XLA)."""
    return "cudnn" if config.attention == "cudnn" else None


def dropout_key(rng: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """The dropout stream's key from a step key, in the generator `model.dropout_rng` names."""
    if config.dropout_rng == "threefry":
        return rng
    bits = jax.random.bits(rng, (4,), jnp.uint32)  # an rbg key is 4 words
    return jax.random.wrap_key_data(bits, impl="rbg")


REMAT_POLICIES = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "block": jax.checkpoint_policies.nothing_saveable}


def layer_class(config: ml_collections.ConfigDict) -> type[nn.Module]:
    """`EncoderLayer`, rematerialised as `model.remat` says (same parameter names)."""
    remat = config.get("remat", "none")  # absent from runs saved before the field
    if remat == "none":
        return EncoderLayer
    return nn.remat(EncoderLayer, policy=REMAT_POLICIES[remat], static_argnums=(2,))


def mask_token_id(codebook_size: int) -> int:
    """The [MASK] token id: right after the image codes."""
    return codebook_size


def class_token_id(label: jax.Array, codebook_size: int) -> jax.Array:
    """Vocabulary id of the class position for `label`: class c -> K + 1 + c; the unconditional
    label (`masking.UNCONDITIONAL`, any negative label) -> the [MASK] id K."""
    return jnp.where(label < 0, mask_token_id(codebook_size), label + codebook_size + 1)


def vocab_size(codebook_size: int, num_classes: int) -> int:
    """Image codes + [MASK] + classes."""
    return codebook_size + 1 + num_classes


# The length cuDNN's fused attention runs on: it refused MaskGIT's odd 257 in training (on an
# H200, JAX 0.11.2); a multiple of 16 is even and keeps the sequence tile-aligned.
CUDNN_SEQUENCE_MULTIPLE = 16


def attention(query: jax.Array, key: jax.Array, value: jax.Array, *, dropout_rate: float = 0.0,
              dropout_rng: jax.Array | None = None, implementation: str | None = None
              ) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v, with dropout on the attention weights when `dropout_rate > 0`.

    query, key, value: [B, N, H, D] -> [B, N, H, D] in value's dtype. The dropout is MaskGIT's
    (flax `dot_product_attention`, broadcast_dropout=True): one keep-mask [N, N] for the whole
    batch and every head, kept weights scaled by 1 / (1 - rate); the softmax runs in float32.
    Without dropout, `jax.nn.dot_product_attention` with `implementation` (None: XLA).
    """
    if dropout_rate <= 0 and implementation == "cudnn":
        return padded_attention(query, key, value, implementation=implementation)
    if dropout_rate <= 0:
        return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
    if implementation is not None:
        raise ValueError(f"model.attention = {implementation!r} has no attention-weight "
                         "dropout: set model.attention_dropout = 0")
    out = nn.dot_product_attention(query, key, value, dropout_rng=dropout_rng,
                                   dropout_rate=dropout_rate, broadcast_dropout=True,
                                   deterministic=False, force_fp32_for_softmax=True)
    return out.astype(value.dtype)


def padded_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                     implementation: str | None, multiple: int = CUDNN_SEQUENCE_MULTIPLE
                     ) -> jax.Array:
    """`jax.nn.dot_product_attention` over a sequence padded to a multiple of `multiple`, the
    padding masked out of the keys and cut from the output.

    cuDNN's fused attention refuses odd training lengths, and MaskGIT's sequence is 257 (256
    codes + the class token); the padded positions get no attention weight, so the result is
    the unpadded one.
    """
    length = query.shape[1]
    padded = -(-length // multiple) * multiple
    if padded == length:
        return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
    widths = [(0, 0), (0, padded - length), (0, 0), (0, 0)]
    query, key, value = (jnp.pad(x, widths) for x in (query, key, value))
    lengths = jnp.full((query.shape[0],), length, jnp.int32)
    out = jax.nn.dot_product_attention(query, key, value, implementation=implementation,
                                       query_seq_lengths=lengths, key_value_seq_lengths=lengths)
    return out[:, :length]


class SelfAttention(nn.Module):
    """Multi-head self-attention (no mask: every token sees every token).

    x: [B, N, D] -> [B, N, D]. With `dropout_rate > 0` and `train`, the attention weights get
    dropout as in MaskGIT (see `attention`).
    """

    num_heads: int
    dtype: jnp.dtype
    kernel_init: nn.initializers.Initializer
    implementation: str | None = None  # jax.nn.dot_product_attention's; None = XLA
    dropout_rate: float = 0.0  # on the attention weights

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        qkv = nn.DenseGeneral(
            (3, self.num_heads, head_dim), dtype=self.dtype, kernel_init=self.kernel_init,
            name="qkv",
        )(x)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        dropping = train and self.dropout_rate > 0
        out = attention(query, key, value, dropout_rate=self.dropout_rate if dropping else 0.0,
                        dropout_rng=self.make_rng("dropout") if dropping else None,
                        implementation=self.implementation)
        return nn.DenseGeneral(
            width, axis=(-2, -1), dtype=self.dtype, kernel_init=self.kernel_init, name="out"
        )(out)


class EncoderLayer(nn.Module):
    """Post-LN block: x = LN(x + drop(attn(x))); x = LN(x + drop(mlp(x))). x: [B, N, D]."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        config = self.config
        dtype = DTYPES[config.dtype]
        init = nn.initializers.truncated_normal(config.initializer_range)
        y = SelfAttention(config.num_heads, dtype, init, attention_implementation(config),
                          config.attention_dropout)(x, train)
        y = nn.Dropout(config.dropout_rate, deterministic=not train)(y)
        x = nn.LayerNorm(epsilon=LAYERNORM_EPS, dtype=dtype, name="attention_ln")(x + y)
        y = nn.Dense(config.mlp_dim, dtype=dtype, kernel_init=init, name="mlp_in")(x)
        y = nn.gelu(y)
        y = nn.Dense(x.shape[-1], dtype=dtype, kernel_init=init, name="mlp_out")(y)
        y = nn.Dropout(config.dropout_rate, deterministic=not train)(y)
        return nn.LayerNorm(epsilon=LAYERNORM_EPS, dtype=dtype, name="mlp_ln")(x + y)


class MaskedTransformer(nn.Module):
    """Predicts image codes at every position from a partly masked token grid and a class.

    Attributes:
      config: `model.*` fields (see `TransformerModelConfig`).
      codebook_size: number of image codes K (ids 0..K-1; K is [MASK]).
      num_classes: number of classes C.
      seq_len: tokens per image (h * w).
    """

    config: ml_collections.ConfigDict
    codebook_size: int
    num_classes: int
    seq_len: int

    @nn.compact
    def __call__(self, tokens: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
        """tokens: int32 [B, N] (image codes or mask id); labels: int32 [B] in [0, C), or
        `masking.UNCONDITIONAL` (-1) for the unconditional input ([MASK] as the class token).

        Returns float32 logits [B, N, K] over the image codes.
        """
        config = self.config
        dtype = DTYPES[config.dtype]
        init = nn.initializers.truncated_normal(config.initializer_range)
        if tokens.shape[-1] != self.seq_len:
            raise ValueError(f"tokens have {tokens.shape[-1]} positions, expected {self.seq_len}")
        embed = nn.Embed(
            vocab_size(self.codebook_size, self.num_classes), config.hidden_size,
            embedding_init=init, name="token_embedding",
        )
        class_tokens = class_token_id(labels.astype(jnp.int32), self.codebook_size)[:, None]
        ids = jnp.concatenate([class_tokens, tokens.astype(jnp.int32)], axis=1)  # [B, 1 + N]
        positions = self.param(
            "position_embedding", init, (1 + self.seq_len, config.hidden_size)
        )
        x = embed(ids) + positions[None]
        x = nn.LayerNorm(epsilon=LAYERNORM_EPS, dtype=dtype, name="embedding_ln")(x)
        x = nn.Dropout(config.dropout_rate, deterministic=not train)(x).astype(dtype)
        layer = layer_class(config)
        for i in range(config.num_layers):
            x = layer(config, name=f"layer_{i}")(x, train)
        x = x[:, 1:]  # drop the class position
        x = nn.Dense(config.hidden_size, dtype=dtype, kernel_init=init, name="head_dense")(x)
        x = nn.gelu(x)
        x = nn.LayerNorm(epsilon=LAYERNORM_EPS, dtype=dtype, name="head_ln")(x)
        codes = embed.embedding[: self.codebook_size].astype(dtype)  # tied output layer [K, D]
        logits = jnp.einsum("bnd,kd->bnk", x, codes)
        bias = self.param("head_bias", nn.initializers.zeros, (self.codebook_size,))
        return logits.astype(jnp.float32) + bias


def flops_per_token(config: ml_collections.ConfigDict, codebook_size: int, seq_len: int) -> float:
    """Forward matmul FLOPs per token (2 * multiply-adds), attention scores included."""
    d, mlp, layers = config.hidden_size, config.mlp_dim, config.num_layers
    per_layer = 2 * (3 * d * d + d * d + 2 * d * mlp) + 2 * 2 * (seq_len + 1) * d
    head = 2 * (d * d + d * codebook_size)
    return float(layers * per_layer + head)
