"""Masking schedule and MaskGIT parallel decoding: floors, exact counts, unmasking, guidance."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.maskgit import transformer as transformer_configs
from fsq_jax import config_lib
from maskgit import decoding, masking

SEQ_LEN = 16
CODEBOOK = 7
MASK_ID = CODEBOOK
NUM_CLASSES = 3


def test_cosine_schedule_endpoints():
    assert float(masking.schedule(0.0)) == pytest.approx(1.0)
    assert float(masking.schedule(1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(masking.schedule(0.5)) == pytest.approx(math.cos(math.pi / 4))


@pytest.mark.parametrize("method", masking.SCHEDULES)
def test_mask_ratio_respects_floor(method):
    ratios = np.asarray(masking.sample_mask_ratio(jax.random.key(0), 4096, 0.45, method))
    assert ratios.min() >= 0.45 - 1e-6
    assert ratios.max() <= 1.0
    # Restricting the schedule (no point mass at the floor): few samples sit on it exactly.
    assert np.mean(np.isclose(ratios, 0.45, atol=1e-4)) < 0.01
    # Without the floor the cosine schedule often masks less than 45%.
    low = np.asarray(masking.sample_mask_ratio(jax.random.key(0), 4096, 0.0, method))
    assert np.mean(low < 0.45) > 0.2


def test_mask_has_exact_count_per_sample():
    ratios = jnp.array([0.0, 0.3, 0.45, 0.5, 0.99, 1.0])
    counts = masking.num_masked(ratios, 20, min_ratio=0.45)
    np.testing.assert_array_equal(counts, [9, 9, 9, 10, 20, 20])  # ceil(0.45 * 20) = 9 floor
    mask = masking.mask_by_count(jax.random.key(1), counts, 20)
    np.testing.assert_array_equal(np.asarray(mask).sum(-1), counts)


def test_random_mask_floor_and_randomness():
    mask = np.asarray(masking.random_mask(jax.random.key(3), 256, 64, min_ratio=0.45))
    counts = mask.sum(-1)
    assert counts.min() >= math.ceil(0.45 * 64)
    assert len(set(counts.tolist())) > 5  # ratios vary per example
    assert mask.mean(0).min() > 0.2 and mask.mean(0).max() < 0.95  # positions are random


def test_bad_floor_names_field():
    with pytest.raises(ValueError, match=r"masking.min_ratio"):
        masking.sample_mask_ratio(jax.random.key(0), 2, 1.0)


def _toy_logits_fn(seed: int = 0):
    """A logits function that depends on labels and on the current (partly masked) tokens."""
    table = jax.random.normal(jax.random.key(seed), (NUM_CLASSES + 1, SEQ_LEN, CODEBOOK)) * 2.0
    mix = jax.random.normal(jax.random.key(seed + 1), (CODEBOOK + 1, CODEBOOK))

    def fn(tokens, labels):
        context = jnp.mean(mix[tokens], axis=1, keepdims=True)  # [B, 1, K]
        return table[labels] + context

    return fn


@pytest.mark.parametrize("num_steps", [1, 12])
def test_decoding_unmasks_everything_and_never_changes_fixed_tokens(num_steps):
    labels = jnp.array([0, 1, 2, 3, 0])
    tokens, history = jax.jit(
        lambda rng: decoding.decode(
            _toy_logits_fn(),
            labels,
            rng,
            seq_len=SEQ_LEN,
            mask_id=MASK_ID,
            num_steps=num_steps,
            return_history=True,
        )
    )(jax.random.key(0))
    tokens, history = np.asarray(tokens), np.asarray(history)
    assert history.shape == (num_steps, 5, SEQ_LEN)
    assert not (tokens == MASK_ID).any()
    assert tokens.min() >= 0 and tokens.max() < CODEBOOK
    np.testing.assert_array_equal(history[-1], tokens)
    masked = (history == MASK_ID).sum(-1)
    assert (masked == masked[:, :1]).all()  # the same count for every sample
    # Strictly fewer masked tokens after every step, following the cosine schedule.
    assert (np.diff(masked[:, 0]) < 0).all()
    previous = SEQ_LEN
    for step in range(1, num_steps):
        value = SEQ_LEN * math.cos(math.pi / 2 * step / num_steps)
        allowed = {min(max(math.floor(value + d), 1), previous - 1) for d in (-1e-4, 1e-4)}
        assert masked[step - 1, 0] in allowed
        previous = masked[step - 1, 0]
    for step in range(1, num_steps):
        fixed = history[step - 1] != MASK_ID
        np.testing.assert_array_equal(history[step][fixed], history[step - 1][fixed])


def test_guided_logits_convention():
    cond = jnp.array([[[1.0, 2.0]]])
    uncond = jnp.array([[[3.0, -1.0]]])
    np.testing.assert_allclose(
        decoding.guided_logits(cond, uncond, 0.2), cond + 0.2 * (cond - uncond)
    )
    np.testing.assert_array_equal(decoding.guided_logits(cond, uncond, 0.0), cond)


def test_guidance_scale_zero_equals_conditional_only_path():
    """With scale 0, the batched cond+uncond path (scale passed as an array, so it runs both
    passes) samples exactly the tokens of the conditional-only path (no unconditional pass)."""
    fn = _toy_logits_fn()
    labels = jnp.array([0, 1, 2, 2])
    rng = jax.random.key(5)
    kwargs = dict(seq_len=SEQ_LEN, mask_id=MASK_ID, num_steps=6)
    conditional = decoding.decode(
        decoding.guided_logits_fn(fn, None), labels, rng, **kwargs
    )
    guided = jax.jit(
        lambda scale: decoding.decode(
            decoding.guided_logits_fn(fn, scale), labels, rng, **kwargs
        )
    )
    np.testing.assert_array_equal(guided(jnp.float32(0.0)), conditional)
    assert (np.asarray(guided(jnp.float32(3.0))) != np.asarray(conditional)).any()


def test_guidance_unconditional_pass_masks_the_class():
    """The second half of the guided batch carries the unconditional label, which the
    transformer turns into the [MASK] token in the class position (FSQ paper Sec. 4.3)."""
    seen = []

    def fn(tokens, labels):
        seen.append((tokens, labels))
        return jnp.zeros((*tokens.shape, CODEBOOK))

    tokens = jnp.arange(2 * SEQ_LEN, dtype=jnp.int32).reshape(2, SEQ_LEN) % CODEBOOK
    decoding.guided_logits_fn(fn, 0.5)(tokens, jnp.array([0, 1]))
    both_tokens, both_labels = seen[0]
    np.testing.assert_array_equal(both_labels, [0, 1, masking.UNCONDITIONAL,
                                                masking.UNCONDITIONAL])
    np.testing.assert_array_equal(both_tokens, np.concatenate([tokens, tokens]))
    assert masking.UNCONDITIONAL == -1


def test_label_dropout_replaces_labels_by_the_unconditional_label():
    labels = jnp.arange(20_000, dtype=jnp.int32) % 7
    dropped = np.asarray(masking.drop_labels(jax.random.key(0), labels, 0.1))
    unconditional = dropped == masking.UNCONDITIONAL
    assert abs(unconditional.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(dropped[~unconditional], np.asarray(labels)[~unconditional])
    np.testing.assert_array_equal(masking.drop_labels(jax.random.key(0), labels, 0.0), labels)


def test_decoding_is_one_loop_and_batch_shards():
    fn = _toy_logits_fn()
    config = transformer_configs.get_config("fsq,tiny").sampling
    config.num_steps = 5

    def sample(labels, rng):
        return decoding.sample_tokens(
            fn, labels, rng, config, seq_len=SEQ_LEN, mask_id=MASK_ID)

    labels = jnp.arange(8) % NUM_CLASSES
    jaxpr = str(jax.make_jaxpr(sample)(labels, jax.random.key(0)))
    # The decoding loop is a single lax loop (fori_loop lowers to scan with static bounds).
    assert jaxpr.count("while[") + jaxpr.count("scan[") == 1
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(
        labels, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    )
    out = jax.jit(sample)(sharded, jax.random.key(0))
    assert len(out.sharding.device_set) == len(jax.devices())
    np.testing.assert_array_equal(out, jax.jit(sample)(labels, jax.random.key(0)))


def test_sampling_config_errors_name_field():
    for field, value in (("num_steps", 0), ("guidance_scale", -1.0), ("temperature", 0.0)):
        config = transformer_configs.get_config("fsq,tiny").sampling
        config[field] = value
        with pytest.raises(ValueError, match=rf"config.sampling.{field} = {value}: must be"):
            config_lib.check(config, decoding.SamplingConfig, "config.sampling")
