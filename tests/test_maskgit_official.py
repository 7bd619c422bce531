"""The published MaskGIT checkpoints: conversion into our tokenizer and transformer.

Synthetic checkpoints come from reference Flax modules written here after google-research/maskgit
`nets/vqgan_tokenizer.py` and `nets/maskgit_transformer.py` (module names, creation order, the
ResBlock shortcut on the block output, TF-style 'same' average pooling, nearest upsampling, the
[MASK] id -1, the class ids label + K, the full-vocabulary MLM head), so their parameter trees have
the official names and shapes at small widths. Conversion must copy every leaf bit for bit, name
the first mismatching leaf, and give a model computing the reference's function.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from fsq_jax import config_lib, quantizers, run_dir, train
from fsq_jax.train import resume
from fsq_jax.train.npz_init import CheckpointMismatchError
from maskgit import api as maskgit_api
from maskgit import masking, official, tasks, tokenizer, transformer

# Small widths, official structure: GroupNorm keeps MaskGIT's 32 groups, so every width is a
# multiple of 32; 16x16 images and three levels give 4x4 tokens.
FILTERS, MULTIPLIERS, BLOCKS, EMBEDDING, CODES, IMAGE = 32, (1, 1, 2), 2, 16, 64, 16
LAYERS, HIDDEN, HEADS, MLP, CLASSES = 2, 32, 4, 64, 10
SEQ = (IMAGE // 4) ** 2
ROOT = Path(__file__).resolve().parents[1]


# -- reference modules (the official architecture and names) ---------------------------------


class ResBlock(nn.Module):
    filters: int

    @nn.compact
    def __call__(self, x):
        h = x
        for _ in range(2):
            h = nn.GroupNorm()(h)
            h = nn.swish(h)
            h = nn.Conv(self.filters, (3, 3), use_bias=False)(h)
        if x.shape[-1] != self.filters:  # the input is dropped; the 1x1 conv reads h
            return h + nn.Conv(self.filters, (1, 1), use_bias=False)(h)
        return h + x


def tf_average_pool(x):
    """2x2 / stride 2 'same' pooling that averages only real cells (TensorFlow's rule)."""
    window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "SAME")
    count = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, window, strides, "SAME")
    return total / count


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(FILTERS, (3, 3), use_bias=False)(x)
        for level, mult in enumerate(MULTIPLIERS):
            for _ in range(BLOCKS):
                x = ResBlock(FILTERS * mult)(x)
            if level < len(MULTIPLIERS) - 1:
                x = tf_average_pool(x)
        for _ in range(BLOCKS):
            x = ResBlock(x.shape[-1])(x)
        x = nn.swish(nn.GroupNorm()(x))
        return nn.Conv(EMBEDDING, (1, 1))(x)


class Decoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(FILTERS * MULTIPLIERS[-1], (3, 3))(x)
        for _ in range(BLOCKS):
            x = ResBlock(x.shape[-1])(x)
        for level in reversed(range(len(MULTIPLIERS))):
            for _ in range(BLOCKS):
                x = ResBlock(FILTERS * MULTIPLIERS[level])(x)
            if level > 0:
                n, h, w, c = x.shape
                x = jax.image.resize(x, (n, 2 * h, 2 * w, c), "nearest")
                x = nn.Conv(c, (3, 3))(x)
        x = nn.swish(nn.GroupNorm()(x))
        return nn.Conv(3, (3, 3))(x)


class Quantizer(nn.Module):
    @nn.compact
    def __call__(self, z):
        codebook = self.param("codebook", nn.initializers.normal(1.0), (CODES, z.shape[-1]))
        distances = (jnp.sum(z**2, -1, keepdims=True) - 2 * z @ codebook.T
                     + jnp.sum(codebook**2, -1))
        return jnp.argmin(distances, -1)

    def lookup(self, ids):
        return jnp.take(self.variables["params"]["codebook"], ids, axis=0)


class VQVAE(nn.Module):
    """Images in [0, 1] -> ids; ids -> images in ~[0, 1]."""

    def setup(self):
        self.encoder, self.quantizer, self.decoder = Encoder(), Quantizer(), Decoder()

    def __call__(self, images):
        return self.decoder(self.quantizer.lookup(self.quantizer(self.encoder(images))))

    def encode_ids(self, images):
        return self.quantizer(self.encoder(images))

    def decode_ids(self, ids):
        return self.decoder(self.quantizer.lookup(ids))


LN_EPS = 1e-12


class Embed(nn.Module):
    @nn.compact
    def __call__(self, ids):
        init = nn.initializers.normal(0.5)
        words = nn.Embed(CODES + CLASSES + 1, HIDDEN, embedding_init=init,
                         name="word_embeddings")(ids)
        positions = nn.Embed(SEQ + 1, HIDDEN, embedding_init=init,
                             name="position_embeddings")(jnp.arange(ids.shape[-1])[None])
        return nn.LayerNorm(epsilon=LN_EPS, name="embeddings_ln")(words + positions)


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.SelfAttention(num_heads=HEADS, qkv_features=HIDDEN, name="self_attention")(x)
        return nn.LayerNorm(epsilon=LN_EPS, name="attention_output_ln")(x + y)


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = jax.nn.gelu(nn.Dense(MLP, name="intermediate_output")(x))
        y = nn.Dense(HIDDEN, name="layer_output")(y)
        return nn.LayerNorm(epsilon=LN_EPS, name="layer_output_ln")(x + y)


class TransformerLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Mlp()(Attention()(x))


class Bias(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + self.param("bias", nn.initializers.normal(1.0), (x.shape[-1],))


class MlmLayer(nn.Module):
    @nn.compact
    def __call__(self, x, embedding):
        x = nn.LayerNorm(epsilon=LN_EPS, name="mlm_ln")(
            jax.nn.gelu(nn.Dense(HIDDEN, name="mlm_dense")(x)))
        return Bias(name="mlm_bias")(x @ embedding.T)


class Transformer(nn.Module):
    """ids [B, 1 + N] (class id first, -1 = [MASK]) -> logits [B, 1 + N, K + C + 1]."""

    @nn.compact
    def __call__(self, ids):
        x = Embed()(ids)
        for _ in range(LAYERS):
            x = TransformerLayer()(x)
        return MlmLayer()(x, self.variables["params"]["Embed_0"]["word_embeddings"]["embedding"])


def _random_tree(tree, seed, scale=0.3):
    """Every leaf redrawn (biases and norm scales too), so no converted leaf is a default."""
    rng = np.random.default_rng(seed)
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [((1.0 if "scale" in jax.tree_util.keystr(path) else 0.0)
               + scale * rng.standard_normal(leaf.shape)).astype(np.float32)
              for path, leaf in paths]
    return jax.tree.unflatten(treedef, leaves)


@pytest.fixture(scope="module")
def reference():
    """Reference params (random) and their msgpack files, as maskgit stores checkpoints."""
    vqvae, net = VQVAE(), Transformer()
    images = jax.ShapeDtypeStruct((1, IMAGE, IMAGE, 3), jnp.float32)
    vq_params = _random_tree(jax.eval_shape(vqvae.init, jax.random.key(0), images)["params"], 1)
    # Codebook rows near the encoder's outputs, so that many codes are used.
    encode = jax.jit(lambda p, x: vqvae.apply({"params": p}, x, method=lambda m, y: m.encoder(y)))
    unit = np.random.default_rng(2).random((4, IMAGE, IMAGE, 3), np.float32)
    latents = np.asarray(encode(vq_params, unit)).reshape(-1, EMBEDDING)
    noise = 0.01 * np.random.default_rng(3).standard_normal((CODES, EMBEDDING))
    vq_params["quantizer"]["codebook"] = (latents[:CODES] + noise).astype(np.float32)
    ids = jax.ShapeDtypeStruct((1, SEQ + 1), jnp.int32)
    tr_params = _random_tree(jax.eval_shape(net.init, jax.random.key(4), ids)["params"], 5)
    return {"vqvae": vqvae, "vq_params": vq_params, "net": net, "tr_params": tr_params}


@pytest.fixture(scope="module")
def files(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("maskgit_official")
    paths = {}
    for name, params in (("tokenizer", reference["vq_params"]),
                         ("transformer", reference["tr_params"])):
        paths[name] = str(root / f"{name}_checkpoint")
        with open(paths[name], "wb") as f:
            f.write(serialization.msgpack_serialize({"params": params}))
    return paths


def tokenizer_config():
    config = config_lib.load("maskgit/tokenizer.py:vq,paper,official")
    config.data.image_size = IMAGE
    config.model.update(filters=FILTERS, channel_multipliers=MULTIPLIERS, num_res_blocks=BLOCKS,
                        embedding_dim=EMBEDDING)
    config.quantizer.vq.update(codebook_size=CODES, dim=EMBEDDING)
    config.discriminator.update(channel_multiplier=1.0 / 32, max_filters=32)  # not converted
    return config


def transformer_config():
    config = config_lib.load("maskgit/transformer.py:vq,paper,official")
    config.data.image_size = IMAGE
    config.num_classes = CLASSES
    config.model.update(num_layers=LAYERS, hidden_size=HIDDEN, num_heads=HEADS, mlp_dim=MLP)
    return config


def _flat(tree):
    return traverse_util.flatten_dict(dict(tree), sep="/")


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# -- the tokenizer -----------------------------------------------------------------------------


def test_tokenizer_conversion_copies_every_leaf_bit_for_bit(reference, files):
    variables = official.load_tokenizer(files["tokenizer"], tokenizer_config())
    ours, theirs = _flat(variables["params"]), _flat(reference["vq_params"])
    assert set(ours) == set(theirs)  # the same names, one for one
    for name in theirs:
        assert _bits_equal(ours[name], theirs[name]), name
    # The channel-changing blocks hold MaskGIT's [1, 1, out, out] output shortcut.
    assert ours["encoder/ResBlock_4/Conv_2/kernel"].shape == (1, 1, 64, 64)


def test_converted_tokenizer_computes_the_reference_function(reference, files):
    config = tokenizer_config()
    model = tokenizer.build(config)
    variables = official.load_tokenizer(files["tokenizer"], config)
    unit = jax.random.uniform(jax.random.key(9), (3, IMAGE, IMAGE, 3))
    ref = reference["vqvae"]
    ref_vars = {"params": reference["vq_params"]}
    ids = ref.apply(ref_vars, unit, method=VQVAE.encode_ids)
    assert len(np.unique(ids)) > 4  # a real test of the lookup, not one code everywhere
    ours = model.apply(variables, unit * 2.0 - 1.0, method="tokenize")  # ours takes [-1, 1]
    np.testing.assert_array_equal(ours, ids)
    decoded = model.apply(variables, ids, method="decode_tokens")
    np.testing.assert_allclose(decoded, ref.apply(ref_vars, ids, method=VQVAE.decode_ids) * 2 - 1,
                               atol=2e-5, rtol=2e-5)


def _np_group_norm(x, scale, bias, groups=32, eps=1e-6):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _np_conv_same(x, kernel):
    k = kernel.shape[0]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy:dy + x.shape[1], dx:dx + x.shape[2]]
            out += window @ kernel[dy, dx]
    return out


def _np_swish(x):
    return x / (1.0 + np.exp(-x))


def test_one_resblock_matches_numpy_with_the_official_shortcut_placement(reference):
    """encoder/ResBlock_4 widens 32 -> 64: out = h + conv1x1(h), the input only feeds h."""
    p = {k.removeprefix("encoder/ResBlock_4/"): np.asarray(v, np.float64)
         for k, v in _flat(reference["vq_params"]).items() if k.startswith("encoder/ResBlock_4/")}
    x = np.asarray(jax.random.normal(jax.random.key(11), (2, 8, 8, 32)), np.float64)
    h = _np_conv_same(_np_swish(_np_group_norm(x, p["GroupNorm_0/scale"],
                                               p["GroupNorm_0/bias"])), p["Conv_0/kernel"])
    h = _np_conv_same(_np_swish(_np_group_norm(h, p["GroupNorm_1/scale"],
                                               p["GroupNorm_1/bias"])), p["Conv_1/kernel"])
    expected = h + _np_conv_same(h, p["Conv_2/kernel"])

    converted = official.convert_tokenizer(_flat(reference["vq_params"]), tokenizer_config(),
                                           "ref")
    block_params = converted["params"]["encoder"]["ResBlock_4"]
    for placement, close in (("output", True), ("input", False)):
        block = tokenizer.ResBlock(64, 32, nn.swish, shortcut=placement)
        if placement == "input":  # the standard block needs a [1, 1, in, out] kernel
            block_params = {**block_params, "Conv_2": {"kernel": block_params["Conv_2"][
                "kernel"][:, :, :32]}}
        got = np.asarray(block.apply({"params": block_params}, jnp.asarray(x, jnp.float32)))
        assert np.allclose(got, expected, atol=1e-4, rtol=1e-4) == close, placement


def test_vq_lookup_is_the_nearest_codeword_in_numpy(reference, files):
    config = tokenizer_config()
    variables = official.load_tokenizer(files["tokenizer"], config)
    vq = quantizers.build(config.quantizer)
    codebook = np.asarray(reference["vq_params"]["quantizer"]["codebook"], np.float64)
    z = np.asarray(codebook[:20] + 0.3 * np.random.default_rng(0).normal(size=(20, EMBEDDING)))
    expected = np.argmin(((z[:, None] - codebook[None]) ** 2).sum(-1), axis=-1)
    out = vq.apply({"params": variables["params"]["quantizer"]}, jnp.asarray(z, jnp.float32))
    np.testing.assert_array_equal(out.indices, expected)
    np.testing.assert_array_equal(out.quantized, codebook[expected].astype(np.float32))


# -- the transformer ---------------------------------------------------------------------------


def _load_transformer(path, config=None):
    config = config or transformer_config()
    return official.load_transformer(path, config.model, CODES, CLASSES, SEQ)


def test_vocabulary_rows_follow_the_official_ids():
    rows = official.vocabulary_rows(CODES, CLASSES, transformer.vocab_size(CODES, CLASSES))
    mask_row = CODES + CLASSES  # id -1 of a K + C + 1 row table
    assert rows[transformer.mask_token_id(CODES)] == mask_row
    np.testing.assert_array_equal(rows[:CODES], np.arange(CODES))
    for label in (0, 3, CLASSES - 1):
        assert rows[int(transformer.class_token_id(np.int32(label), CODES))] == CODES + label
    # The unconditional input of guidance is [MASK] in the class position: the published row.
    assert rows[int(transformer.class_token_id(np.int32(masking.UNCONDITIONAL), CODES))] == (
        mask_row)
    # Both vocabularies are codes + classes + [MASK]: the same rows in another order.
    assert transformer.vocab_size(CODES, CLASSES) == official.official_vocab_size(CODES, CLASSES)
    np.testing.assert_array_equal(np.sort(rows), np.arange(CODES + CLASSES + 1))
    extra = CODES + CLASSES + 1
    with pytest.raises(CheckpointMismatchError, match=rf"ids \[{extra}\] are no code, class"):
        official.vocabulary_rows(CODES, CLASSES, CODES + CLASSES + 2)


def test_transformer_conversion_copies_every_leaf_bit_for_bit(reference, files):
    ours = _flat(_load_transformer(files["transformer"]))
    theirs = _flat(reference["tr_params"])
    rows = official.vocabulary_rows(CODES, CLASSES, transformer.vocab_size(CODES, CLASSES))
    words = theirs["Embed_0/word_embeddings/embedding"]
    assert _bits_equal(ours["token_embedding/embedding"], words[rows])
    assert _bits_equal(ours["position_embedding"], theirs["Embed_0/position_embeddings/embedding"])
    assert _bits_equal(ours["head_bias"], theirs["MlmLayer_0/mlm_bias/bias"][:CODES])
    for i in range(LAYERS):
        attention = f"TransformerLayer_{i}/Attention_0/self_attention"
        for j, part in enumerate(("query", "key", "value")):
            assert _bits_equal(ours[f"layer_{i}/SelfAttention_0/qkv/kernel"][:, j],
                               theirs[f"{attention}/{part}/kernel"])
            assert _bits_equal(ours[f"layer_{i}/SelfAttention_0/qkv/bias"][j],
                               theirs[f"{attention}/{part}/bias"])
        for ours_name, theirs_name in (("SelfAttention_0/out", "Attention_0/self_attention/out"),
                                       ("mlp_in", "Mlp_0/intermediate_output"),
                                       ("mlp_out", "Mlp_0/layer_output")):
            for leaf in ("kernel", "bias"):
                assert _bits_equal(ours[f"layer_{i}/{ours_name}/{leaf}"],
                                   theirs[f"TransformerLayer_{i}/{theirs_name}/{leaf}"])


def _np_layer_norm(x, p, prefix):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * p[f"{prefix}/scale"] + p[f"{prefix}/bias"]


def _np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _np_official_transformer(p, ids, num_layers):
    """Numpy forward pass of the official transformer on ids [B, 1 + N] (-1 = [MASK]):
    embedding, `num_layers` post-LN layers, MLM head; logits [B, N, K] (class position and
    non-code ids dropped, as inference.py)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    words = p["Embed_0/word_embeddings/embedding"]
    x = words[ids] + p["Embed_0/position_embeddings/embedding"][None, : ids.shape[1]]
    x = _np_layer_norm(x, p, "Embed_0/embeddings_ln")
    for i in range(num_layers):
        a = f"TransformerLayer_{i}/Attention_0/self_attention"
        q, k, v = (np.einsum("bnd,dhk->bnhk", x, p[f"{a}/{n}/kernel"]) + p[f"{a}/{n}/bias"]
                   for n in ("query", "key", "value"))
        scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = np.einsum("bhqs,bshk->bqhk", weights, v)
        y = np.einsum("bqhk,hkd->bqd", y, p[f"{a}/out/kernel"]) + p[f"{a}/out/bias"]
        x = _np_layer_norm(x + y, p, f"TransformerLayer_{i}/Attention_0/attention_output_ln")
        m = f"TransformerLayer_{i}/Mlp_0"
        y = _np_gelu(x @ p[f"{m}/intermediate_output/kernel"] + p[f"{m}/intermediate_output/bias"])
        y = y @ p[f"{m}/layer_output/kernel"] + p[f"{m}/layer_output/bias"]
        x = _np_layer_norm(x + y, p, f"{m}/layer_output_ln")
    h = _np_gelu(x @ p["MlmLayer_0/mlm_dense/kernel"] + p["MlmLayer_0/mlm_dense/bias"])
    h = _np_layer_norm(h, p, "MlmLayer_0/mlm_ln")
    logits = h @ words.T + p["MlmLayer_0/mlm_bias/bias"]
    return logits[:, 1:, :CODES]


def _official_and_our_inputs(seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, CODES, (3, SEQ))
    masked = rng.random((3, SEQ)) < 0.5
    labels = np.array([0, 4, CLASSES - 1])
    official_ids = np.concatenate([labels[:, None] + CODES, np.where(masked, -1, codes)], 1)
    ours = np.where(masked, transformer.mask_token_id(CODES), codes)
    return official_ids, jnp.asarray(ours, jnp.int32), jnp.asarray(labels, jnp.int32)


def test_embedding_one_layer_and_head_match_numpy(reference, files):
    """A one-layer model from the first layer's arrays against the numpy forward pass."""
    config = transformer_config()
    config.model.num_layers = 1
    arrays = {k: v for k, v in _flat(reference["tr_params"]).items()
              if not k.startswith("TransformerLayer_1/")}
    params = official.convert_transformer(arrays, config.model, CODES, CLASSES, SEQ, "ref")
    official_ids, tokens, labels = _official_and_our_inputs(0)
    expected = _np_official_transformer(_flat(reference["tr_params"]), official_ids, 1)
    net = transformer.MaskedTransformer(config.model, CODES, CLASSES, SEQ)
    got = net.apply({"params": params}, tokens, labels)
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=2e-4)


def test_converted_transformer_computes_the_reference_logits(reference, files):
    config = transformer_config()
    params = _load_transformer(files["transformer"], config)
    official_ids, tokens, labels = _official_and_our_inputs(1)
    ref = reference["net"].apply({"params": reference["tr_params"]}, jnp.asarray(official_ids))
    net = transformer.MaskedTransformer(config.model, CODES, CLASSES, SEQ)
    got = net.apply({"params": params}, tokens, labels)
    np.testing.assert_allclose(got, ref[:, 1:, :CODES], atol=2e-5, rtol=2e-5)
    # The numpy pass agrees with the reference module too (both layers).
    np.testing.assert_allclose(
        _np_official_transformer(_flat(reference["tr_params"]), official_ids, LAYERS),
        ref[:, 1:, :CODES], atol=2e-4, rtol=2e-4)
    # Our unconditional input ([MASK] as the class token) is the official model fed its [MASK]
    # id -1 in the class position.
    official_ids[:, 0] = -1
    ref = reference["net"].apply({"params": reference["tr_params"]}, jnp.asarray(official_ids))
    got = net.apply({"params": params}, tokens, jnp.full((3,), masking.UNCONDITIONAL))
    np.testing.assert_allclose(got, ref[:, 1:, :CODES], atol=2e-5, rtol=2e-5)


# -- mismatches name the leaf ------------------------------------------------------------------


def test_missing_misshaped_and_unexpected_arrays_are_named(reference):
    arrays = _flat(reference["tr_params"])
    config = transformer_config()

    def convert(a):
        return official.convert_transformer(a, config.model, CODES, CLASSES, SEQ, "ckpt")

    missing = {k: v for k, v in arrays.items() if k != "TransformerLayer_1/Mlp_0/layer_output/bias"}
    with pytest.raises(CheckpointMismatchError,
                       match=r"ckpt: missing array 'TransformerLayer_1/Mlp_0/layer_output/bias'"):
        convert(missing)
    misshaped = {**arrays, "Embed_0/position_embeddings/embedding": np.zeros((2 * SEQ + 1,
                                                                              HIDDEN))}
    with pytest.raises(CheckpointMismatchError,
                       match=r"'Embed_0/position_embeddings/embedding' has shape \(33, 32\), "
                             r"expected \(17, 32\)"):
        convert(misshaped)
    extra = {**arrays, "TransformerLayer_2/Mlp_0/layer_output/bias": np.zeros((HIDDEN,))}
    with pytest.raises(CheckpointMismatchError,
                       match=r"unexpected array 'TransformerLayer_2/Mlp_0/layer_output/bias'"):
        convert(extra)
    # ... unless the caller chose to ignore it.
    convert_ignoring = official.convert_transformer(extra, config.model, CODES, CLASSES, SEQ,
                                                    "ckpt", ignore=("TransformerLayer_2/.*",))
    assert "layer_1" in convert_ignoring


def test_a_tokenizer_of_another_architecture_is_refused_naming_the_field_or_leaf(reference):
    arrays = _flat(reference["vq_params"])
    config = tokenizer_config()
    config.model.shortcut = "input"
    with pytest.raises(CheckpointMismatchError, match=r"config.model.shortcut = 'input'"):
        official.convert_tokenizer(arrays, config, "ckpt")
    # A deeper model than the file: the blocks shift, and the first leaf that differs is named.
    config = tokenizer_config()
    config.model.num_res_blocks = 3
    with pytest.raises(CheckpointMismatchError,
                       match=r"ckpt: array 'encoder/ResBlock_4/Conv_0/kernel' has shape "
                             r"\(3, 3, 32, 64\), expected \(3, 3, 32, 32\)"):
        official.convert_tokenizer(arrays, config, "ckpt")
    # Another width: the first differing leaf, the stem's kernel, is named.
    config = tokenizer_config()
    config.model.filters = 64
    with pytest.raises(CheckpointMismatchError,
                       match=r"'encoder/Conv_0/kernel' has shape \(3, 3, 3, 32\), expected "
                             r"\(3, 3, 3, 64\)"):
        official.convert_tokenizer(arrays, config, "ckpt")


def test_checkpoint_formats(reference, files, tmp_path):
    arrays = official.read_checkpoint(files["transformer"], "t")
    assert set(arrays) == set(_flat(reference["tr_params"]))
    flat = _flat(reference["tr_params"])
    for prefix in ("params/", ""):
        path = tmp_path / f"t{prefix.strip('/')}.npz"
        np.savez(path, **{prefix + k: np.asarray(v) for k, v in flat.items()})
        again = official.read_checkpoint(str(path), "t")
        assert set(again) == set(arrays)
        assert all(_bits_equal(again[k], arrays[k]) for k in arrays)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\xc1 not msgpack")
    with pytest.raises(CheckpointMismatchError, match="neither a flax msgpack checkpoint"):
        official.read_checkpoint(str(garbage), "t")
    with pytest.raises(CheckpointMismatchError, match="no such file"):
        official.read_checkpoint(str(tmp_path / "absent"), "t")


# -- run directories: sample.py / evaluate.py read them ------------------------------------------


def test_write_runs_gives_workdirs_that_sample_like_the_reference(reference, files, tmp_path):
    runs = official.write_runs(str(tmp_path / "out"), files["tokenizer"], tokenizer_config(),
                               files["transformer"], transformer_config())
    task, restored = tasks.TransformerTask.from_workdir(runs["transformer"])
    theirs = _flat(_load_transformer(files["transformer"]))
    ours = _flat(restored["params"]["transformer"])
    assert all(_bits_equal(ours[k], theirs[k]) for k in theirs)
    frozen = _flat(restored["model_state"]["tokenizer"]["params"])
    assert all(_bits_equal(frozen[k], v) for k, v in _flat(reference["vq_params"]).items())
    assert restored["step"] == transformer_config().total_steps
    # Sampling runs end to end and decodes with the reference decoder.
    labels = np.arange(8, dtype=np.int32) % CLASSES
    images = task.sample_fn(restored)(labels, jax.random.key(0))
    assert images.shape == (8, IMAGE, IMAGE, 3) and images.dtype == np.uint8
    # Nothing overwrites a run.
    with pytest.raises(FileExistsError, match="already holds a run"):
        official.write_runs(str(tmp_path / "out"), files["tokenizer"], tokenizer_config())
    config = run_dir.read_config(runs["tokenizer"])
    assert (config.model.shortcut, config.model.project_codes) == ("output", False)
    assert os.path.isdir(os.path.join(runs["tokenizer"], "checkpoints"))


def test_converted_runs_are_read_by_the_api_and_accepted_as_written(reference, files, tmp_path):
    """maskgit.api reads the converted tokenizer run as one of ours; rerunning either run with
    its own config is no config change, and the transformer's config validates with the
    converted tokenizer as its frozen stage."""
    runs = official.write_runs(str(tmp_path / "out"), files["tokenizer"], tokenizer_config(),
                               files["transformer"], transformer_config())
    api = maskgit_api.Tokenizer.from_workdir(runs["tokenizer"])
    images = np.random.default_rng(7).integers(0, 256, (3, IMAGE, IMAGE, 3), dtype=np.uint8)
    ids = reference["vqvae"].apply({"params": reference["vq_params"]},
                                   jnp.asarray(images, jnp.float32) / 255.0,
                                   method=VQVAE.encode_ids)
    assert len(np.unique(ids)) > 4
    np.testing.assert_array_equal(api.encode(images), ids)
    for run in runs.values():
        config = run_dir.read_config(run)
        assert resume.check_config(config, run) == {}
        assert resume.finished_results(config, run) is None  # no results yet: evaluate it
    config = train.validate(run_dir.read_config(runs["transformer"]))
    assert config.tokenizer_workdir == os.path.abspath(runs["tokenizer"])


@pytest.mark.slow
def test_the_loop_trains_a_transformer_on_the_converted_tokenizer(files, tmp_path):
    """The converted tokenizer as the frozen stage of a new stage-II run: validated, restored
    and encoded through by the loop, like a tokenizer of ours."""
    runs = official.write_runs(str(tmp_path / "out"), files["tokenizer"], tokenizer_config())
    config = transformer_config()
    config.tokenizer_workdir = runs["tokenizer"]
    config.data.source = "scenes"  # no ImageNet here: the procedural scenes at 16x16
    config.num_classes = 0  # the scenes' classes
    config.update(total_steps=2, batch_size=8, eval_batch_size=8, eval_steps=1, log_every=1,
                  eval_every=0, images_every=0, checkpoint_every=0)
    config.evaluators.update(fid=False, num_images=8, batch_size=8)
    config.sampling.num_steps = 2
    workdir = str(tmp_path / "transformer")
    results = train.train_and_evaluate(config, workdir)
    assert results["step"] == 2
    assert results["eval"] and all(np.isfinite(v) for v in results["eval"].values())


@pytest.mark.slow
def test_evaluate_reads_the_converted_tokenizer(files, tmp_path):
    config = tokenizer_config()
    runs = official.write_runs(str(tmp_path / "out"), files["tokenizer"], config)
    config = run_dir.read_config(runs["tokenizer"])
    config.data.source = "scenes"  # no ImageNet here: the procedural scenes at 16x16
    config.eval_batch_size, config.eval_steps = 8, 1
    config.evaluators.update(fid=False, usage=True, num_images=16, batch_size=8)
    results = train.evaluate(config, runs["tokenizer"])
    assert results["step"] == config.total_steps
    assert np.isfinite(results["eval"]["eval/reconstruction_l2"])


def _small_overrides() -> list[str]:
    """The documented command's config flags, shrunk to the reference modules' sizes."""
    multipliers = ",".join(map(str, MULTIPLIERS))
    return [f"--tokenizer_config={ROOT}/configs/maskgit/tokenizer.py:vq,paper,official",
            f"--tokenizer_config.model.filters={FILTERS}",
            f"--tokenizer_config.model.channel_multipliers=({multipliers})",
            f"--tokenizer_config.model.num_res_blocks={BLOCKS}",
            f"--tokenizer_config.model.embedding_dim={EMBEDDING}",
            f"--tokenizer_config.quantizer.vq.codebook_size={CODES}",
            f"--tokenizer_config.quantizer.vq.dim={EMBEDDING}",
            "--tokenizer_config.discriminator.max_filters=32",
            f"--transformer_config={ROOT}/configs/maskgit/transformer.py:vq,paper,official",
            f"--transformer_config.num_classes={CLASSES}",
            f"--transformer_config.model.num_layers={LAYERS}",
            f"--transformer_config.model.hidden_size={HIDDEN}",
            f"--transformer_config.model.num_heads={HEADS}",
            f"--transformer_config.model.mlp_dim={MLP}"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)


@pytest.mark.slow
def test_documented_commands_convert_and_sample(files, tmp_path):
    """scripts/convert_official.py, then scripts/sample.py writing ADM-format samples."""
    done = _run("scripts/convert_official.py", "--model=maskgit", f"--out={tmp_path / 'o2'}",
                f"--tokenizer={files['tokenizer']}", f"--transformer={files['transformer']}",
                f"--image_size={IMAGE}", *_small_overrides())
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {tmp_path / 'o2' / 'transformer'} (transformer)" in done.stdout
    done = _run("scripts/sample.py", f"--workdir={tmp_path / 'o2' / 'transformer'}",
                f"--out={tmp_path / 'samples'}", "--num_images=8", "--batch_size=8",
                "--max_classes=2", "--per_class=2")
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(tmp_path / "samples" / "samples.npz") as samples:
        assert samples["arr_0"].shape == (8, IMAGE, IMAGE, 3)
    bad = tmp_path / "bad_checkpoint"
    bad.write_bytes(b"\xc1")
    done = _run("scripts/convert_official.py", "--model=maskgit", f"--out={tmp_path / 'o3'}",
                f"--tokenizer={bad}")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("conversion failed: ")


def test_official_presets_validate_with_the_published_settings(tmp_path):
    tokenizer_cfg = config_lib.load("maskgit/tokenizer.py:vq,paper,official")
    assert train.validate(tokenizer_cfg).model.shortcut == "output"
    assert (tokenizer_cfg.model.project_codes, tokenizer_cfg.model.image_range) == (False, "unit")
    assert (tokenizer_cfg.quantizer.vq.codebook_size, tokenizer_cfg.quantizer.vq.dim) == (1024, 256)
    run_dir.write_json(str(tmp_path / "config.json"), run_dir.config_json(tokenizer_cfg))
    transformer_cfg = config_lib.load("maskgit/transformer.py:vq,paper,official")
    transformer_cfg.tokenizer_workdir = str(tmp_path)
    train.validate(transformer_cfg)
    sampling = transformer_cfg.sampling
    assert (sampling.num_steps, sampling.schedule, sampling.choice_temperature,
            sampling.temperature, sampling.guidance_scale) == (12, "cosine", 4.5, 1.0, 0.0)
    assert (transformer_cfg.model.dtype, transformer_cfg.num_classes) == ("float32", 1000)
    with pytest.raises(ValueError, match="'official' is the released VQ tokenizer"):
        config_lib.load("maskgit/tokenizer.py:fsq,paper,official")
    # Without projections the quantizer must take the encoder width: FSQ's 4 dims cannot.
    tokenizer_cfg.quantizer.name = "fsq"
    with pytest.raises(train.ConfigError, match=r"model.project_codes.*code dim \(4\) to equal "
                                                r"model.embedding_dim \(256\)"):
        train.validate(tokenizer_cfg)
