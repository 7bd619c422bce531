"""Compression cost: the masking order, exact bit counts with controlled logits, and that a
trained transformer codes its data in fewer bits than an untrained one."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from maskgit import compression, transformer


def test_reveal_counts_follow_m2ts_power_schedule():
    # N=64, T=8, alpha=2.2: revealed after step t floor(64 (t/8)^2.2) = 0 (-> 1), 3, 7, 13, 22,
    # 33, 47, 64.
    np.testing.assert_array_equal(compression.reveal_counts(64, 8), [1, 2, 4, 6, 9, 11, 14, 17])
    # alpha = 1: the linear schedule, N/T per step.
    np.testing.assert_array_equal(compression.reveal_counts(16, 4, alpha=1.0), [4, 4, 4, 4])
    np.testing.assert_array_equal(compression.reveal_counts(5, 5), [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(compression.reveal_counts(7, 1), [7])
    for seq_len, steps in [(64, 12), (64, 8), (256, 12), (13, 12)]:
        counts = compression.reveal_counts(seq_len, steps)
        assert counts.sum() == seq_len and counts.min() >= 1 and len(counts) == steps
        assert np.all(np.diff(counts[-4:]) >= 0)  # growing groups, as M2T's alpha > 1


@pytest.mark.parametrize("seq_len, steps", [(0, 1), (4, 0), (4, 5)])
def test_reveal_counts_rejects_impossible_step_counts(seq_len, steps):
    with pytest.raises(ValueError, match=r"seq_len|num_steps"):
        compression.reveal_counts(seq_len, steps)


def test_qlds_order_is_the_r2_sequence_on_the_grid():
    """M2T's QLDS: the cells of the R2 points x_n = (0.5 + n / g, 0.5 + n / g^2) mod 1 (g the
    plastic number), first visits only. By hand on a 4x4 grid: n = 1 -> (0.2549, 0.0698) ->
    cell (1, 0) = 4; n = 2 -> (0.0098, 0.6397) -> (0, 2) = 2; n = 3 -> (0.7646, 0.2095) -> (3, 0)
    = 12; n = 4 -> (0.5195, 0.7794) -> (2, 3) = 11."""
    g = compression.PLASTIC_NUMBER
    assert g**3 == pytest.approx(g + 1)
    order = compression.qlds_order((4, 4))
    np.testing.assert_array_equal(order[:4], [4, 2, 12, 11])
    np.testing.assert_array_equal(np.sort(order), np.arange(16))
    for grid in [(8, 8), (16, 16), (3, 5)]:
        order = compression.reveal_order(grid, "qlds")
        np.testing.assert_array_equal(np.sort(order), np.arange(grid[0] * grid[1]))
        # Deterministic: the same order every call, no seed involved.
        np.testing.assert_array_equal(order, compression.reveal_order(grid, "qlds", seed=7))


def test_qlds_groups_spread_over_the_grid():
    """The point of QLDS: the first group of each step is spread out. Every 4x4 quadrant of the
    8x8 grid gets one of the first four positions, and the first 16 cover every 2x2 block."""
    order = compression.qlds_order((8, 8))
    rows, cols = order // 8, order % 8
    assert len(set(zip(rows[:4] // 4, cols[:4] // 4))) == 4
    assert len(set(zip(rows[:16] // 2, cols[:16] // 2))) >= 14


def test_reveal_order_is_fixed():
    np.testing.assert_array_equal(compression.reveal_order((1, 5), "raster"), np.arange(5))
    a = compression.reveal_order((8, 8), "random", seed=3)
    np.testing.assert_array_equal(a, compression.reveal_order((8, 8), "random", seed=3))
    np.testing.assert_array_equal(np.sort(a), np.arange(64))
    assert not np.array_equal(a, compression.reveal_order((8, 8), "random", seed=4))
    with pytest.raises(ValueError, match="order"):
        compression.reveal_order((2, 2), "spiral")


def test_reveal_steps_assign_the_groups_in_order():
    counts = compression.reveal_counts(16, 4)
    steps = compression.reveal_steps((4, 4), 4, order="raster")
    np.testing.assert_array_equal(steps, np.repeat(np.arange(4), counts))
    for order in ("qlds", "random"):
        positions = compression.reveal_order((4, 4), order, seed=1)
        shuffled = compression.reveal_steps((4, 4), 4, order=order, seed=1)
        np.testing.assert_array_equal(shuffled[positions], steps)
    # The paper's default: QLDS with alpha 2.2.
    np.testing.assert_array_equal(compression.reveal_steps((4, 4), 4),
                                  compression.reveal_steps((4, 4), 4, order="qlds", alpha=2.2))


def _cost(logits_fn, tokens, labels, num_steps, codebook_size, order="raster"):
    tokens = jnp.asarray(tokens, jnp.int32)
    grid = (1, tokens.shape[1]) if order != "qlds" else (4, tokens.shape[1] // 4)
    reveal = jnp.asarray(compression.reveal_steps(grid, num_steps, order=order))
    return np.asarray(compression.compression_cost_bits(
        logits_fn, None, tokens, jnp.asarray(labels, jnp.int32), reveal, num_steps=num_steps,
        codebook_size=codebook_size, mask_id=codebook_size))


def test_uniform_logits_cost_exactly_n_log2_k_bits():
    # Three extra special-token logits (mask, classes) must not enter the softmax.
    def uniform(params, tokens, labels):
        return jnp.zeros((*tokens.shape, 10 + 3))

    tokens = np.random.default_rng(0).integers(0, 10, (3, 16))
    bits = _cost(uniform, tokens, [0, 1, 2], num_steps=4, codebook_size=10)
    assert bits.shape == (3,) and bits.dtype == np.float32
    np.testing.assert_allclose(bits, 16 * math.log2(10), rtol=1e-6)
    assert compression.uniform_bits(16, 10) == pytest.approx(16 * math.log2(10))


def test_fixed_distribution_costs_its_information_content():
    # p = (1/2, 1/4, 1/4): code 0 costs 1 bit, codes 1 and 2 cost 2 bits each.
    def fixed(params, tokens, labels):
        logits = jnp.log(jnp.asarray([0.5, 0.25, 0.25]))
        return jnp.broadcast_to(logits, (*tokens.shape, 3))

    tokens = [[0, 0, 1, 2, 0, 1], [2, 2, 2, 2, 2, 2]]
    np.testing.assert_allclose(_cost(fixed, tokens, [0, 0], 3, 3), [9.0, 12.0], rtol=1e-6)


def test_each_group_is_coded_given_only_the_tokens_revealed_before_it():
    # A model that knows nothing until some token is visible, then puts 3/4 on code 0.
    def context(params, tokens, labels):
        seen = jnp.any(tokens != 4, axis=1)[:, None, None]  # mask id 4
        informed = jnp.log(jnp.asarray([0.75, 0.25 / 3, 0.25 / 3, 0.25 / 3]))
        return jnp.where(seen, informed, jnp.zeros(4)) * jnp.ones((*tokens.shape, 4))

    counts = compression.reveal_counts(16, 4)  # [1, 2, 5, 8]
    expected = counts[0] * 2.0 + (16 - counts[0]) * -math.log2(0.75)
    for order in ("random", "qlds"):
        bits = _cost(context, np.zeros((1, 16)), [0], 4, 4, order=order)
        np.testing.assert_allclose(bits, [expected], rtol=1e-6)


def test_labels_reach_the_model():
    def by_label(params, tokens, labels):
        # label 0: uniform over 4 codes (2 bits); label 1: certain of code 0 (0 bits).
        sharp = jnp.asarray([0.0, -1e9, -1e9, -1e9])
        return jnp.where((labels == 1)[:, None, None], sharp, 0.0) * jnp.ones((*tokens.shape, 4))

    bits = _cost(by_label, np.zeros((2, 8)), [0, 1], 2, 4)
    np.testing.assert_allclose(bits, [16.0, 0.0], atol=1e-5)


def test_a_trained_transformer_needs_fewer_bits_than_an_untrained_one():
    """Tokens with structure (every token equals the class label) are learnable: a few steps of
    masked-token training must cut the cost well below an untrained model's."""
    codebook_size, num_classes, seq_len = 8, 4, 16
    config = ml_collections.ConfigDict({
        "num_layers": 1, "hidden_size": 32, "num_heads": 2, "mlp_dim": 64,
        "dropout_rate": 0.0, "attention_dropout": 0.0, "initializer_range": 0.02,
        "dtype": "float32", "attention": "xla",
        "dropout_rng": "threefry"})
    model = transformer.MaskedTransformer(config, codebook_size, num_classes, seq_len)
    mask_id = transformer.mask_token_id(codebook_size)
    labels = jnp.arange(16, dtype=jnp.int32) % num_classes
    tokens = jnp.repeat(labels[:, None], seq_len, axis=1)
    params = model.init(jax.random.key(0), tokens, labels)["params"]
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, rng):
        mask = jax.random.bernoulli(rng, 0.7, tokens.shape)
        inputs = jnp.where(mask, mask_id, tokens)

        def loss_fn(p):
            logits = model.apply({"params": p}, inputs, labels)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
            return jnp.sum(loss * mask) / jnp.maximum(jnp.sum(mask), 1)

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def logits_fn(p, t, y):
        return model.apply({"params": p}, t, y)

    reveal = jnp.asarray(compression.reveal_steps((4, 4), 4))

    def bits(p):
        return np.asarray(compression.compression_cost_bits(
            logits_fn, p, tokens, labels, reveal, num_steps=4, codebook_size=codebook_size,
            mask_id=mask_id))

    before = bits(params)
    np.testing.assert_allclose(before, seq_len * 3.0, rtol=0.05)  # untrained: ~uniform
    opt_state = optimizer.init(params)
    for index in range(60):
        params, opt_state = step(params, opt_state, jax.random.key(index))
    after = bits(params)
    assert np.all(after < 0.25 * before), (before, after)


def test_evaluate_workdir_names_the_bad_input(tmp_path):
    with pytest.raises(ValueError, match="transformer_workdir"):
        compression.evaluate_workdir(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="order"):
        compression.evaluate_workdir(str(tmp_path), order="spiral")
