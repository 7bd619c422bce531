"""UViM models: patch folding, pinned parameter counts, stage-II KV-cache decoding."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_jax import quantizers
from uvim import stage1, stage2, vit
from uvim.outputs import build_output

# Stage-I params per (task, preset); paper presets through jax.eval_shape (nothing allocated).
# VQ's codebook is EMA state, not params; FSQ has none, so the two differ by the projections
# to and from the code (width x 768 for VQ vs width x 5 for FSQ). Panoptic has UViM's 100
# instance channels (slot 0 void; big_vision vqvae_coco_panoptic.py), one fewer than the
# earlier 1 + max_instances: 2,064 (tiny) / 393,472 (paper) params less than before.
STAGE1_PARAMS = {
    ("depth", "fsq,tiny"): 413_444,
    ("depth", "vq,tiny"): 417_056,
    ("depth", "fsq,paper"): 231_076_869,
    ("depth", "vq,paper"): 232_249_600,
    ("colorization", "fsq,tiny"): 155_444,
    ("colorization", "vq,tiny"): 159_056,
    ("colorization", "fsq,paper"): 131_528_453,
    ("colorization", "vq,paper"): 132_701_184,
    ("panoptic", "fsq,tiny"): 196_788,
    ("panoptic", "vq,tiny"): 200_400,
    ("panoptic", "fsq,paper"): 222_421_253,
    ("panoptic", "vq,paper"): 223_593_984,
}
# Stage-II params per preset (the same for every task; the vocabulary is codebook + BOS).
STAGE2_PARAMS = {"fsq,tiny": 305_065, "vq,tiny": 308_161,
                 "fsq,paper": 716_498_200, "vq,paper": 715_926_529}


def _count(model, init_variables) -> int:
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("task", ["depth", "colorization", "panoptic"])
def test_parameter_counts_are_pinned(task):
    module = importlib.import_module(f"configs.uvim.{task}")
    for preset in ("fsq,tiny", "vq,tiny", "fsq,paper", "vq,paper"):
        config = module.get_config(preset)
        targets = build_output(config.output).target_channels()
        model1 = stage1.build(config.model, config.quantizer, targets)
        assert _count(model1, stage1.init_variables) == STAGE1_PARAMS[(task, preset)], preset
        if task == "depth":
            model2 = stage2.build(config.stage2, quantizers.codebook_size(config.quantizer),
                                  config.model.code_len)
            assert _count(model2, stage2.init_variables) == STAGE2_PARAMS[preset], preset


def test_paper_preset_is_uvim_sized():
    config = importlib.import_module("configs.uvim.depth").get_config("vq,paper")
    assert (config.model.patch_size, config.model.width) == (16, 768)
    assert (config.model.enc_depth, config.model.dec_depth) == (6, 12)
    assert config.data.image_size == 512 and config.model.code_len == 256
    assert config.quantizer.vq.codebook_size == 4096 and config.quantizer.vq.split_codes
    fsq = importlib.import_module("configs.uvim.depth").get_config("fsq,paper")
    assert tuple(fsq.quantizer.fsq.levels) == (7, 5, 5, 5, 5)


def test_patches_round_trip():
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    patches = vit.to_patches(x, 4)
    assert patches.shape == (2, 6, 3, 16)
    np.testing.assert_array_equal(patches[0, 1, :, 0], x[0, 0, 4])  # patch (0, 1), pixel (0, 0)
    np.testing.assert_array_equal(vit.from_patches(patches, (2, 3), 4), x)


def _random_params(params, scale=0.5):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )


def test_kv_cache_decoding_equals_full_decoding():
    model = stage2.Stage2Model(
        codebook_size=50,
        seq_len=9,
        dropout=0.0,
        input_size=16,
        patch_size=4,
        width=32,
        enc_depth=1,
        dec_depth=2,
        mlp_dim=64,
        num_heads=4,
    )
    params = jax.jit(lambda key: _random_params(stage2.init_variables(model, key)["params"]))(
        jax.random.key(0)
    )
    image = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3), minval=-1.0, maxval=1.0)
    generate = jax.jit(stage2.generate, static_argnums=0, static_argnames=("use_cache",))
    rng = jax.random.key(2, impl="unsafe_rbg")  # cheaper to compile than threefry
    # temperature is traced: greedy (0) and sampled decoding share one compilation.
    cached = np.asarray(generate(model, params, image, rng, temperature=0.0))
    full = np.asarray(generate(model, params, image, rng, temperature=0.0, use_cache=False))
    assert cached.shape == (3, 9) and cached.dtype == np.int32
    assert len(np.unique(cached)) > 3  # a non-trivial sequence, not one repeated token
    assert cached.min() >= 0 and cached.max() < 50  # never the BOS token
    np.testing.assert_array_equal(cached, full)
    # Greedy tokens are the argmax of the teacher-forced logits of their own prefix.
    logits = jax.jit(model.apply)({"params": params}, image, jnp.asarray(full))
    np.testing.assert_array_equal(np.argmax(np.asarray(logits)[..., :50], -1), full)
    sampled = generate(model, params, image, rng, temperature=1.0)
    np.testing.assert_array_equal(
        sampled, generate(model, params, image, rng, temperature=1.0, use_cache=False)
    )
    assert not np.array_equal(np.asarray(sampled), cached)
