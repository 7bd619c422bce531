"""MaskGIT models: pinned shapes and parameter counts of every preset, losses, config errors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.maskgit import tokenizer as tokenizer_configs
from configs.maskgit import transformer as transformer_configs
from fsq_jax import config_lib, quantizers, train
from maskgit import discriminator, losses, masking, tasks, tokenizer, transformer


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


# (tokenizer params, discriminator params, transformer params, token grid side). The paper
# tokenizers have MaskGIT's output shortcuts ([1, 1, out, out] kernels) and the VQ one has no
# projections around the quantizer, as google-research/maskgit's VQGAN. The transformer's
# vocabulary is codes + [MASK] + classes: the unconditional input masks the class token instead
# of a separate null class, one embedding row (hidden_size) fewer than before:
# 172_438_504 - 768, 172_456_960 - 768, 225_008 - 64, 226_048 - 64.
PINNED = {
    "fsq,paper": (54_255_751, 23_998_017, 172_437_736, 16),
    "vq,paper": (54_515_587, 23_998_017, 172_456_192, 16),
    "fsq,tiny": (149_414, 72_657, 224_944, 8),
    "vq,tiny": (159_491, 72_657, 225_984, 8),
}


@pytest.mark.parametrize("arg", sorted(PINNED))
def test_preset_shapes_and_parameter_counts(arg):
    """Abstract init only (jax.eval_shape): the paper presets allocate nothing."""
    tok_params, disc_params, transformer_params, side = PINNED[arg]
    config = tokenizer_configs.get_config(arg)
    size = config.data.image_size
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    model = tokenizer.build(config)
    variables = jax.eval_shape(
        lambda rng, x: model.init({"params": rng, quantizers.RNG_STREAM: rng}, x, train=True),
        jax.random.key(0),
        images,
    )
    assert _count(variables["params"]) == tok_params
    recon, out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
    dim = quantizers.code_dim(config.quantizer)
    assert recon.shape == (2, size, size, 3)
    assert out.quantized.shape == (2, side, side, dim)
    assert out.indices.shape == (2, side, side) and out.indices.dtype == jnp.int32
    critic = discriminator.Discriminator(config.discriminator)
    critic_params = jax.eval_shape(critic.init, jax.random.key(0), images)
    assert _count(critic_params) == disc_params
    assert jax.eval_shape(critic.apply, critic_params, images).shape == (2,)

    stage2 = transformer_configs.get_config(arg)
    codebook = quantizers.codebook_size(config.quantizer)
    classes = tasks.num_classes(stage2)  # tiny: the 12 classes of the procedural scenes
    net = transformer.MaskedTransformer(stage2.model, codebook, classes, side * side)
    tokens = jax.ShapeDtypeStruct((2, side * side), jnp.int32)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    params = jax.eval_shape(net.init, jax.random.key(0), tokens, labels)
    assert _count(params) == transformer_params
    logits = jax.eval_shape(net.apply, params, tokens, labels)
    assert logits.shape == (2, side * side, codebook) and logits.dtype == jnp.float32


def test_paper_presets_follow_the_paper():
    fsq = tokenizer_configs.get_config("fsq,paper")
    vq = tokenizer_configs.get_config("vq,paper")
    assert tuple(fsq.quantizer.fsq.levels) == (8, 5, 5, 5)
    assert quantizers.code_dim(fsq.quantizer) == 4
    assert (vq.quantizer.vq.codebook_size, vq.quantizer.vq.beta,
            vq.quantizer.vq.entropy_weight) == (
        1024,
        0.25,
        0.1,
    )
    assert tuple(fsq.model.channel_multipliers) == (1, 1, 2, 2, 4)
    assert (fsq.model.filters, fsq.model.num_res_blocks) == (128, 2)
    assert (fsq.batch_size, fsq.total_steps) == (512, 1_000_000)
    stage2 = transformer_configs.get_config("fsq,paper")
    assert (stage2.model.num_layers, stage2.model.hidden_size, stage2.model.num_heads) == (
        24,
        768,
        16,
    )
    assert (stage2.batch_size, stage2.total_steps) == (256, 2_500_000)
    assert stage2.masking.min_ratio == 0.45 and stage2.masking.label_dropout == 0.1
    assert stage2.sampling.num_steps == 12
    assert stage2.sampling.guidance_scale == 0.2
    assert transformer_configs.get_config("vq,paper").sampling.guidance_scale == 0.1


def test_bad_preset_names_arg():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        tokenizer_configs.get_config("fsq,huge")


def test_model_config_errors_name_the_field():
    config = tokenizer_configs.get_config("fsq,tiny")
    config.model.norm_groups = 7
    with pytest.raises(ValueError, match=r"config.model.norm_groups = 7: must divide"):
        config_lib.check(config.model, tokenizer.TokenizerModelConfig, "config.model")
    with pytest.raises(ValueError, match=r"data.image_size"):
        tokenizer.token_grid(tokenizer_configs.get_config("fsq,tiny").model, 30)
    stage2 = transformer_configs.get_config("fsq,tiny")
    stage2.model.num_heads = 5
    with pytest.raises(ValueError, match=r"config.model.num_heads = 5: must divide"):
        config_lib.check(stage2.model, transformer.TransformerModelConfig, "config.model")


def test_transformer_output_is_tied_to_token_embedding():
    config = transformer_configs.get_config("fsq,tiny").model
    net = transformer.MaskedTransformer(config, 240, 10, 64)
    tokens = jnp.full((2, 64), transformer.mask_token_id(240))
    labels = jnp.array([3, 9])
    params = jax.jit(net.init)(jax.random.key(0), tokens, labels)["params"]
    assert params["token_embedding"]["embedding"].shape == (240 + 1 + 10, 64)
    assert "head_bias" in params and not any("kernel" in k for k in params if "head_out" in k)
    # Perturbing an image-code embedding row changes that code's logit everywhere.
    bumped = jax.tree.map(lambda x: x, params)
    noise = jax.random.normal(jax.random.key(1), (64,))
    bumped["token_embedding"]["embedding"] = params["token_embedding"]["embedding"].at[5].add(noise)
    apply = jax.jit(lambda p: net.apply({"params": p}, tokens, labels))
    before, after = apply(params), apply(bumped)
    changed = np.abs(np.asarray(after - before)).max(axis=(0, 1)) > 1e-4
    assert changed[5] and changed.sum() == 1


def test_unconditional_label_puts_the_mask_token_in_the_class_position():
    """FSQ paper Sec. 4.3: the unconditional input is the [MASK] token where the class token
    goes. Only the [MASK] embedding row moves the unconditional logits when every image token
    is given; class rows do not (and the [MASK] row does not move a conditional pass)."""
    config = transformer_configs.get_config("fsq,tiny").model
    codebook, classes, seq_len = 12, 4, 16
    net = transformer.MaskedTransformer(config, codebook, classes, seq_len)
    tokens = jnp.arange(2 * seq_len, dtype=jnp.int32).reshape(2, seq_len) % codebook
    uncond = jnp.full((2,), masking.UNCONDITIONAL)
    cond = jnp.array([0, 3])
    assert [int(t) for t in transformer.class_token_id(jnp.array([-1, 0, 3]), codebook)] == [
        codebook, codebook + 1, codebook + 4]
    params = jax.jit(net.init)(jax.random.key(0), tokens, cond)["params"]
    apply = jax.jit(lambda p, y: net.apply({"params": p}, tokens, y))
    embedding = params["token_embedding"]["embedding"]

    def bumped(row):
        noise = jax.random.normal(jax.random.key(row), embedding.shape[1:])
        return {**params, "token_embedding": {"embedding": embedding.at[row].add(noise)}}

    mask_row = transformer.mask_token_id(codebook)
    changed = lambda a, b: float(np.abs(np.asarray(a - b)).max()) > 1e-4
    assert changed(apply(bumped(mask_row), uncond), apply(params, uncond))
    for class_row in range(codebook + 1, codebook + 1 + classes):
        assert not changed(apply(bumped(class_row), uncond), apply(params, uncond))
    assert not changed(apply(bumped(mask_row), cond), apply(params, cond))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_weight_dropout_is_one_mask_over_batch_and_heads(dtype):
    """MaskGIT's attention dropout (flax SelfAttention, attention_probs_dropout_prob 0.1, flax's
    broadcast_dropout): with zero queries and keys the weights are uniform 1/N and one-hot
    values read them out, so every output is keep[q, k] / ((1 - rate) N), the same keep-mask
    [N, N] for every example and head, about `rate` of it zero."""
    batch, n, heads, rate = 3, 40, 2, 0.3
    zeros = jnp.zeros((batch, n, heads, n), dtype)
    values = jnp.broadcast_to(jnp.eye(n, dtype=dtype)[None, :, None, :], (batch, n, heads, n))
    out = np.asarray(transformer.attention(zeros, zeros, values, dropout_rate=rate,
                                           dropout_rng=jax.random.key(0)), np.float32)
    assert out.shape == (batch, n, heads, n) and out.dtype == np.float32
    kept = 1.0 / ((1.0 - rate) * n)
    np.testing.assert_allclose(out[(out != 0)], kept, rtol=1e-2)
    keep = out[0, :, 0, :] != 0
    for b in range(batch):
        for h in range(heads):
            np.testing.assert_array_equal(out[b, :, h, :] != 0, keep)
    assert abs(1.0 - keep.mean() - rate) < 0.05
    np.testing.assert_allclose(
        np.asarray(transformer.attention(zeros, zeros, values), np.float32), 1.0 / n, rtol=1e-2)


def test_attention_dropout_acts_only_in_training():
    heads, width = 2, 8
    make = lambda rate: transformer.SelfAttention(heads, jnp.float32,
                                                  nn.initializers.lecun_normal(), None, rate)
    x = jax.random.normal(jax.random.key(0), (3, 5, width))
    params = make(0.3).init(jax.random.key(1), x)["params"]
    rngs = {"dropout": jax.random.key(2)}
    plain = make(0.0).apply({"params": params}, x, train=True, rngs=rngs)
    np.testing.assert_array_equal(make(0.3).apply({"params": params}, x, train=False), plain)
    dropped = make(0.3).apply({"params": params}, x, train=True, rngs=rngs)
    assert float(np.abs(np.asarray(dropped - plain)).max()) > 0.01


def test_transformer_paper_and_tiny_presets_drop_attention_weights():
    for arg in ("fsq,paper", "vq,paper", "fsq,tiny", "vq,tiny"):
        assert transformer_configs.get_config(arg).model.attention_dropout == 0.1
    model = transformer_configs.get_config("fsq,paper").model
    model.attention = "cudnn"
    model.dtype = "bfloat16"
    with pytest.raises(ValueError, match=r"config.model.attention_dropout = 0.1: .*cudnn"):
        config_lib.check(model, transformer.TransformerModelConfig, "config.model")


def test_blur_downsample_matches_depthwise_convolution():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    out = discriminator.blur_downsample(x)
    assert out.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(out, discriminator.blur_downsample_reference(x), atol=1e-5)


def test_discriminator_rejects_non_power_of_two():
    with pytest.raises(ValueError, match=r"data.image_size"):
        discriminator.check_image_size(48)
    config = tokenizer_configs.get_config("fsq,tiny")
    config.data.image_size = 48
    with pytest.raises(ValueError, match=r"config.data.image_size = 48: the discriminator"):
        train.validate(config)


def test_gan_losses_match_their_equations():
    real = jnp.array([2.0, -1.0])
    fake = jnp.array([-3.0, 0.5])
    np.testing.assert_allclose(
        losses.generator_adversarial_loss(fake),
        np.mean(np.log1p(np.exp(-np.asarray(fake)))),
        rtol=1e-6,
    )
    expected = np.mean(np.log1p(np.exp(-np.asarray(real)))) + np.mean(
        np.log1p(np.exp(np.asarray(fake)))
    )
    np.testing.assert_allclose(losses.discriminator_loss(real, fake), expected, rtol=1e-6)
    # R1 of a linear critic D(x) = <w, x> is ||w||^2 for every image.
    weight = jax.random.normal(jax.random.key(0), (4, 4, 3))
    critic = lambda x: jnp.sum(x * weight, axis=(1, 2, 3))
    images = jax.random.normal(jax.random.key(1), (3, 4, 4, 3))
    np.testing.assert_allclose(losses.r1_penalty(critic, images), jnp.sum(weight**2), rtol=1e-5)
    # LeCam is zero when real logits sit below the fake EMA and fake logits above the real EMA.
    assert float(losses.lecam_regularizer(real, fake, ema_real=-5.0, ema_fake=5.0)) == 0.0
    assert float(losses.lecam_regularizer(real, fake, ema_real=0.0, ema_fake=0.0)) > 0.0
    np.testing.assert_allclose(losses.reconstruction_loss(real, fake, "l1"), 3.25)
    assert float(losses.adversarial_gate(jnp.array(9), 10)) == 0.0
    assert float(losses.adversarial_gate(jnp.array(10), 10)) == 1.0


def test_perceptual_network_needs_weights(tmp_path):
    config = tokenizer_configs.get_config("fsq,tiny").loss
    config.perceptual_network = "lpips_vgg"
    with pytest.raises(ValueError, match=r"loss.perceptual_weights"):
        losses.load_perceptual(config)
    config.perceptual_weights = str(tmp_path / "wrong.npz")
    np.savez(config.perceptual_weights, unrelated=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        losses.load_perceptual(config)
    config.perceptual_network = "none"
    assert losses.load_perceptual(config) == (None, None)


def test_lpips_vgg_from_user_weights(tmp_path):
    """A weight file with LPIPS-VGG's names loads; distance is 0 for identical images only."""
    rng = np.random.default_rng(0)
    arrays, in_channels = {}, 3
    widths = (64, 128, 256, 512, 512)
    for key in losses.lpips_vgg_keys():
        if key.startswith("lin"):
            arrays[key] = rng.uniform(0, 1, (1, widths[int(key[3])], 1, 1)).astype(np.float32)
        elif key.endswith(".weight"):
            out = widths[int(key.split(".")[1][-1]) - 1]
            arrays[key] = (
                rng.normal(size=(out, in_channels, 3, 3)) / np.sqrt(9 * in_channels)
            ).astype(np.float32)
            in_channels = out
        else:
            arrays[key] = np.zeros(in_channels, np.float32)
    path = tmp_path / "lpips.npz"
    np.savez(path, **arrays)
    config = tokenizer_configs.get_config("fsq,tiny").loss
    config.perceptual_network = "lpips_vgg"
    config.perceptual_weights = str(path)
    network, params = losses.load_perceptual(config)
    images = jax.random.uniform(jax.random.key(0), (1, 16, 16, 3), minval=-1, maxval=1)
    loss = jax.jit(lambda a, b: losses.perceptual_loss(network, params, a, b))
    assert float(loss(images, images)) < 1e-9
    assert float(loss(images, -images)) > 1e-3


@pytest.mark.parametrize("length", [257, 16, 5])
def test_padded_attention_equals_unpadded(length):
    """The cuDNN path pads MaskGIT's 257-long sequence to a multiple of 16 and masks the pad:
    the result must be the unpadded attention (checked with XLA's implementation here)."""
    keys = jax.random.split(jax.random.key(length), 3)
    query, key, value = (jax.random.normal(k, (2, length, 4, 8)) for k in keys)
    expected = jax.nn.dot_product_attention(query, key, value)
    got = transformer.padded_attention(query, key, value, implementation=None)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The pad really is masked: an unmasked pad of zero keys would change every row.
    padded = -(-length // 16) * 16
    if padded != length:
        widths = [(0, 0), (0, padded - length), (0, 0), (0, 0)]
        unmasked = jax.nn.dot_product_attention(*(jnp.pad(x, widths) for x in (query, key, value)))
        assert not np.allclose(unmasked[:, :length], expected, atol=1e-3)
