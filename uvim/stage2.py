"""UViM stage II: an encoder-decoder transformer that predicts the stage-I code from the image.

The encoder reads image patches; the decoder models the code sequence autoregressively (teacher
forcing in training). At inference `generate` decodes greedily or by sampling inside one
jit-compiled `lax.fori_loop`, with a key/value cache so each step costs one token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fsq_jax.config_lib import require
from uvim.vit import (
    DecoderBlock,
    Encoder,
    PatchEmbedding,
    PositionEmbedding,
    ViTConfig,
    remat_block,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage2Config(ViTConfig):
    """`stage2.*`: UViM's stage-II encoder-decoder (the values are in configs/uvim/*.py)."""

    temperature: float  # 0 = greedy decoding at evaluation, else sampling temperature
    # Biases in the decoder's self- and cross-attention projections; big_vision's UViM VTT has
    # none (models/proj/uvim/vtt.py EncoderDecoderBlock: use_bias=False).
    decoder_attention_bias: bool
    encoder_lr_multiplier: float  # the image encoder's learning rate x this
    encoder_init: str  # a ViT .npz the image encoder starts from ("" = random init)

    def __post_init__(self):
        super().__post_init__()
        require(self.temperature >= 0, "temperature", "must be >= 0")
        require(self.encoder_lr_multiplier > 0, "encoder_lr_multiplier", "must be > 0")


class DecoderPositions(nn.Module):
    """Selects the position embeddings of the tokens being decoded.

    Without `decode`: the first `length` positions. With `decode`: one position, read from and
    advanced in a counter kept in the "cache" collection beside the attention caches.
    """

    decode: bool = False

    @nn.compact
    def __call__(self, posemb: jax.Array, length: int) -> jax.Array:
        """posemb: [1, seq_len, width] -> [1, length, width]."""
        if not self.decode:
            return posemb[:, :length]
        initialised = self.has_variable("cache", "position")
        position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        if not initialised:
            return posemb[:, :length]
        i = position.value
        position.value = i + 1
        return jax.lax.dynamic_slice_in_dim(posemb, i, 1, axis=1)


def shift_right(tokens: jax.Array, bos: int) -> jax.Array:
    """Teacher-forcing inputs: [B, L] -> [B, L] with `bos` first and the last token dropped."""
    return jnp.concatenate([jnp.full_like(tokens[:, :1], bos), tokens[:, :-1]], axis=1)


class Stage2Model(nn.Module):
    """Image encoder + autoregressive code decoder.

    Attributes:
      codebook_size: stage-I codebook size; the vocabulary adds one BOS token (id codebook_size).
      seq_len: code length (stage I's `code_len`).
      decode: True builds the single-token decoder with a key/value cache (see `generate`).
      decoder_attention_bias: biases in the decoder blocks' attention projections.
    """

    codebook_size: int
    seq_len: int
    input_size: int
    patch_size: int
    width: int
    enc_depth: int
    dec_depth: int
    mlp_dim: int
    num_heads: int
    dropout: float
    decode: bool = False
    decoder_attention_bias: bool = True
    remat: str = "none"

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 1

    @property
    def bos(self) -> int:
        return self.codebook_size

    def setup(self):
        n = (self.input_size // self.patch_size) ** 2
        self.embed_patches = PatchEmbedding(self.width, self.patch_size)
        self.posemb_encoder = PositionEmbedding(n, self.width)
        self.encoder = Encoder(self.enc_depth, self.num_heads, self.mlp_dim, self.dropout,
                               remat=self.remat)
        # The cached decoder (decode=True) only samples; nothing to rematerialise there.
        block = remat_block(DecoderBlock, "none" if self.decode else self.remat,
                            static_argnums=(4,))
        self.embed_tokens = nn.Embed(self.vocab_size, self.width,
                                     embedding_init=nn.initializers.normal(stddev=1.0))
        self.posemb_decoder = PositionEmbedding(self.seq_len, self.width)
        self.positions = DecoderPositions(self.decode)
        self.blocks = [
            block(self.num_heads, self.mlp_dim, self.dropout, self.decode,
                  self.decoder_attention_bias, name=f"decoder_block_{i}")
            for i in range(self.dec_depth)
        ]
        self.token_dropout = nn.Dropout(self.dropout)
        self.decoder_norm = nn.LayerNorm()
        self.logits = nn.Dense(self.vocab_size, kernel_init=nn.initializers.zeros)

    def encode(self, image: jax.Array, *, train: bool = False) -> jax.Array:
        """Image [B, H, W, 3] in [-1, 1] -> encoded patches [B, N, width]."""
        x = self.embed_patches(image) + self.posemb_encoder()
        return self.encoder(x, deterministic=not train)

    def decode_tokens(self, inputs: jax.Array, encoded: jax.Array, *,
                      train: bool = False) -> jax.Array:
        """Decoder inputs (BOS-shifted tokens) -> logits [B, L, vocab_size].

        Args:
          inputs: int [B, L]; with `decode=True`, L = 1 and the position comes from the cache.
          encoded: [B, N, width] from `encode`.
        """
        x = self.embed_tokens(inputs)
        x = x + self.positions(self.posemb_decoder(), x.shape[1])
        mask = None if self.decode else nn.make_causal_mask(inputs)
        x = self.token_dropout(x, deterministic=not train)
        for block in self.blocks:
            x = block(x, encoded, mask, not train)  # positional: static under remat
        return self.logits(self.decoder_norm(x))

    def __call__(self, image: jax.Array, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        """Teacher forcing: image [B, H, W, 3], target code [B, L] -> logits [B, L, vocab]."""
        encoded = self.encode(image, train=train)
        return self.decode_tokens(shift_right(tokens, self.bos), encoded, train=train)


def build(model: ml_collections.ConfigDict, codebook_size: int, seq_len: int) -> Stage2Model:
    """Stage-II model from its config and the stage-I codebook size and code length."""
    return Stage2Model(
        codebook_size=int(codebook_size), seq_len=int(seq_len),
        input_size=int(model.input_size), patch_size=int(model.patch_size),
        width=int(model.width), enc_depth=int(model.enc_depth), dec_depth=int(model.dec_depth),
        mlp_dim=int(model.mlp_dim), num_heads=int(model.num_heads), dropout=float(model.dropout),
        decoder_attention_bias=bool(model.decoder_attention_bias),
        remat=str(model.get("remat", "none")),  # absent from runs saved before the field
    )


def init_variables(module: Stage2Model, rng: jax.Array, batch_size: int = 1) -> dict[str, Any]:
    """Initial variables from dummy inputs of the right shapes."""
    image = jnp.zeros((batch_size, module.input_size, module.input_size, 3))
    tokens = jnp.zeros((batch_size, module.seq_len), jnp.int32)
    return module.init({"params": rng}, image, tokens, train=False)


def sequence_loss(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean next-token cross-entropy and accuracy: logits [B, L, V], tokens int [B, L]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == tokens)
    return jnp.mean(nll), accuracy


def _pick(logits: jax.Array, rng: jax.Array, temperature: jax.Array, bos: int) -> jax.Array:
    """Next token from logits [B, V]: argmax when temperature == 0, else a sample; never BOS."""
    logits = logits.astype(jnp.float32).at[:, bos].set(-jnp.inf)
    greedy = jnp.argmax(logits, axis=-1)
    sampled = jax.random.categorical(rng, logits / jnp.maximum(temperature, 1e-6), axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def generate(module: Stage2Model, params: Any, image: jax.Array, rng: jax.Array, *,
             temperature: float | jax.Array = 0.0, use_cache: bool = True) -> jax.Array:
    """Autoregressively decodes the code of each image.

    Jit-compatible (`module` and `use_cache` static; `temperature` may be traced, so greedy and
    sampled decoding share one compilation). With `use_cache` every step
    feeds one token through the cached decoder; without it every step re-runs the decoder on the
    whole prefix (slow, kept as the reference the cache is tested against).

    Args:
      module: the stage-II model (with `decode=False`; the cached twin is derived from it).
      params: its params.
      image: [B, H, W, 3] in [-1, 1].
      rng: sampling key (unused when greedy).
      temperature: 0 for greedy decoding, else the softmax temperature of sampling.

    Returns:
      int32 [B, seq_len] token indices in [0, codebook_size).
    """
    b, length, bos = image.shape[0], module.seq_len, module.bos
    temperature = jnp.asarray(temperature, jnp.float32)
    encoded = module.apply({"params": params}, image, method=Stage2Model.encode)
    tokens = jnp.zeros((b, length), jnp.int32)

    if use_cache:
        cached = module.clone(decode=True)
        shapes = jax.eval_shape(
            lambda: cached.init({"params": jax.random.key(0)}, tokens, encoded,
                                method=Stage2Model.decode_tokens)["cache"])
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def step(t, carry):
            tokens, cache, previous = carry
            logits, updated = cached.apply(
                {"params": params, "cache": cache}, previous[:, None], encoded,
                method=Stage2Model.decode_tokens, mutable=["cache"])
            token = _pick(logits[:, 0], jax.random.fold_in(rng, t), temperature, bos)
            return tokens.at[:, t].set(token), updated["cache"], token

        start = jnp.full((b,), bos, jnp.int32)
        tokens, _, _ = jax.lax.fori_loop(0, length, step, (tokens, cache, start))
        return tokens

    def step_full(t, tokens):
        logits = module.apply({"params": params}, shift_right(tokens, bos), encoded,
                              method=Stage2Model.decode_tokens)
        logits_t = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)
        token = _pick(logits_t, jax.random.fold_in(rng, t), temperature, bos)
        return tokens.at[:, t].set(token)

    return jax.lax.fori_loop(0, length, step_full, tokens)
