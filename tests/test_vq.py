"""VQ: nearest code vs brute force, losses, EMA numbers, reseeding, splitting, entropy, k-means."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsq_jax import quantizers
from fsq_jax.quantizers import RNG_STREAM, STATE_COLLECTION, VQ
from fsq_jax.quantizers import vq as vq_lib

KEY = jax.random.PRNGKey(0)


def _vq(**overrides) -> VQ:
    """A small VQ; batch metrics off unless asked for (they only add compile time here)."""
    return quantizers.build(quantizers.config(
        "vq", **{"codebook_size": 16, "dim": 8, "compute_metrics": False, **overrides}))


def _init(vq: VQ, z):
    return jax.jit(vq.init)({"params": KEY, RNG_STREAM: KEY}, z)


def _apply(vq: VQ, variables, *args, **kwargs):
    """vq.apply, compiled as one program (far cheaper than op-by-op dispatch on a busy CPU)."""
    return jax.jit(functools.partial(vq.apply, **kwargs))(variables, *args)


def _train(vq: VQ, variables, z, seed=1):
    out, state = _apply(
        vq,
        variables,
        z,
        train=True,
        mutable=[STATE_COLLECTION],
        rngs={RNG_STREAM: jax.random.PRNGKey(seed)},
    )
    return out, {**variables, **state}


def _with_codebook(vq: VQ, variables, codebook):
    """Variables whose effective codebook is `codebook` (parameter or EMA state)."""
    codebook = jnp.asarray(codebook, jnp.float32)
    if vq.use_ema:
        state = dict(variables[STATE_COLLECTION])
        state.update(codebook=codebook, ema_sum=codebook, ema_count=jnp.ones(codebook.shape[0]))
        return {**variables, STATE_COLLECTION: state}
    return {**variables, "params": {"codebook": codebook}}


def brute_force_nearest(z: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    diff = z[:, None, :].astype(np.float64) - codebook[None, :, :].astype(np.float64)
    return np.argmin(np.sum(diff**2, axis=-1), axis=-1)


@pytest.mark.parametrize("use_ema", [False, True])
def test_nearest_code_matches_brute_force(use_ema):
    vq = _vq(codebook_size=64, dim=12, use_ema=use_ema)
    z = jax.random.normal(jax.random.PRNGKey(1), (4, 25, 12))
    variables = _init(vq, z)
    codebook = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (64, 12)))
    variables = _with_codebook(vq, variables, codebook)
    out = _apply(vq, variables, z)
    expected = brute_force_nearest(np.asarray(z).reshape(-1, 12), codebook).reshape(4, 25)
    assert out.indices.dtype == jnp.int32 and out.indices.shape == (4, 25)
    np.testing.assert_array_equal(np.asarray(out.indices), expected)
    np.testing.assert_array_equal(np.asarray(out.quantized), codebook[expected])
    distances = vq_lib.squared_distances(jnp.asarray(z).reshape(-1, 12), jnp.asarray(codebook))
    brute = np.sum((np.asarray(z).reshape(-1, 1, 12) - codebook[None]) ** 2, axis=-1)
    np.testing.assert_allclose(np.asarray(distances), brute, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size", [1, 2, 7, 1024])
def test_first_argmin_is_argmin(size):
    # Small integers make ties common: the first minimum must win, as with argmin.
    ties = jax.random.randint(jax.random.PRNGKey(size), (300, size), -3, 4).astype(jnp.float32)
    spread = jax.random.normal(jax.random.PRNGKey(size + 1), (300, size)) * 1e3
    signed_zeros = jnp.array([[0.0, -0.0, 0.0], [-0.0, 0.0, 1.0]])[:, :size]
    for values in (ties, spread, jnp.concatenate([ties, -ties]), signed_zeros):
        fast = jax.jit(vq_lib.first_argmin)(values)
        assert fast.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(fast), np.asarray(jnp.argmin(values, axis=-1)))


def test_nearest_code_is_argmin_of_the_distances():
    """The fast argmin picks exactly what argmin over the same distance matrix picks."""
    z = jax.random.normal(jax.random.PRNGKey(5), (4096, 32))
    codebook = jax.random.normal(jax.random.PRNGKey(6), (512, 32)) * 0.3
    codebook = codebook.at[7].set(codebook[3])  # a duplicated code: the lower index must win
    z = z.at[:8].set(codebook[3])

    @jax.jit
    def both(z, codebook):
        e_sq = jnp.sum(codebook * codebook, axis=-1)
        cross = jnp.matmul(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
        argmin = jnp.argmin(e_sq[None, :] - 2.0 * cross, axis=-1).astype(jnp.int32)
        return vq_lib.nearest_code(z, codebook), argmin

    fast, argmin = both(z, codebook)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(argmin))
    assert not np.any(np.asarray(fast) == 7) and np.all(np.asarray(fast)[:8] == 3)


def test_cosine_codes_match_brute_force():
    vq = _vq(codebook_size=32, dim=6, l2_normalize=True)
    z = jax.random.normal(jax.random.PRNGKey(3), (50, 6)) * 3
    variables = _init(vq, z)
    codebook = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (32, 6)))
    variables = _with_codebook(vq, variables, codebook)
    out = _apply(vq, variables, z)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    expected = np.argmax(unit(np.asarray(z)) @ unit(codebook).T, axis=-1)
    np.testing.assert_array_equal(np.asarray(out.indices), expected)
    np.testing.assert_allclose(np.asarray(out.quantized), unit(codebook)[expected], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.quantized), axis=-1), 1.0, rtol=1e-6)


def test_standardized_lookup_is_uvims():
    # big_vision models/proj/uvim/vit.py encode: x = jax.nn.standardize(x, axis=-1), then the
    # argmin of |x|^2 - 2 x.e + |e|^2 over unit-norm codewords e; x_q = e[idx] forward, with
    # straight-through gradients into the standardised x.
    vq = _vq(codebook_size=32, dim=6, use_ema=True, l2_normalize=True, standardize=True)
    z = jax.random.normal(jax.random.PRNGKey(3), (50, 6)) * 3 + 2
    codebook = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (32, 6)))
    variables = _with_codebook(vq, _init(vq, z), codebook)
    out = _apply(vq, variables, z)
    x = np.asarray(jax.nn.standardize(z, axis=-1), np.float64)
    unit = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
    distances = np.sum(x * x, -1)[:, None] - 2 * x @ unit.T + np.sum(unit * unit, -1)
    expected = np.argmin(distances, axis=-1)
    # A lookup of the l2-normalised, uncentred z would differ here.
    assert np.any(expected != np.argmax(np.asarray(z) @ unit.T, axis=-1))
    np.testing.assert_array_equal(np.asarray(out.indices), expected)
    np.testing.assert_allclose(np.asarray(out.quantized), unit[expected], rtol=1e-5)
    weights = jax.random.normal(jax.random.PRNGKey(5), z.shape)
    grad = jax.jit(jax.grad(
        lambda z: jnp.sum(weights * vq.apply(variables, z).quantized)))(z)
    _, standardize_vjp = jax.vjp(lambda z: jax.nn.standardize(z, axis=-1), z)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(standardize_vjp(weights)[0]),
                               rtol=1e-4, atol=1e-5)
    # The EMA statistics accumulate the standardised vectors (big_vision's x_sum of x_pre_q).
    _, trained = _train(vq, variables, z)
    sums = np.zeros_like(codebook)
    np.add.at(sums, expected, x)
    np.testing.assert_allclose(np.asarray(trained[STATE_COLLECTION]["ema_sum"]),
                               vq.ema_decay * codebook + (1 - vq.ema_decay) * sums,
                               rtol=1e-5, atol=1e-6)
    # indices -> codes -> indices is the identity: codes are not standardised again.
    codes = _apply(vq, variables, jnp.arange(32), method=VQ.indices_to_codes)
    np.testing.assert_array_equal(
        np.asarray(_apply(vq, variables, codes, method=VQ.codes_to_indices)), np.arange(32))


def test_losses_and_straight_through_gradients():
    vq = _vq(codebook_size=4, dim=2, beta=0.25)
    codebook = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    z = jnp.array([[0.1, 0.2], [0.8, 0.1], [0.9, 0.7]])
    variables = _with_codebook(vq, _init(vq, z), codebook)
    out = _apply(vq, variables, z)
    np.testing.assert_array_equal(np.asarray(out.indices), [0, 1, 3])
    mse = np.mean((np.asarray(z) - codebook[[0, 1, 3]]) ** 2)
    np.testing.assert_allclose(float(out.metrics["commitment_loss"]), mse, rtol=1e-6)
    np.testing.assert_allclose(float(out.metrics["codebook_loss"]), mse, rtol=1e-6)
    np.testing.assert_allclose(float(out.loss), 1.25 * mse, rtol=1e-6)

    # Straight-through: d sum(w * quantized) / dz = w; the codebook gets no gradient from it.
    weights = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    grad_z, grad_params = jax.jit(
        jax.grad(
            lambda z, p: jnp.sum(weights * vq.apply({"params": p}, z).quantized), argnums=(0, 1)
        )
    )(z, variables["params"])
    np.testing.assert_array_equal(np.asarray(grad_z), np.asarray(weights))
    np.testing.assert_array_equal(np.asarray(grad_params["codebook"]), 0.0)
    # The codebook loss pulls the chosen codes towards their encodings (only those codes).
    grad_codebook = jax.jit(
        jax.grad(lambda p: vq.apply({"params": p}, z).metrics["codebook_loss"])
    )(variables["params"])["codebook"]
    expected = np.zeros_like(codebook)
    for row, code in zip(np.asarray(z), [0, 1, 3]):
        expected[code] += 2 * (codebook[code] - row) / z.size
    np.testing.assert_allclose(np.asarray(grad_codebook), expected, rtol=1e-6, atol=1e-7)


def test_ema_update_hand_worked():
    vq = _vq(codebook_size=2, dim=1, use_ema=True, ema_decay=0.5, ema_epsilon=0.0)
    z = jnp.array([[1.0], [2.0], [9.0]])
    variables = _with_codebook(vq, _init(vq, z), [[0.0], [10.0]])
    # Step 1: assignments 0, 0, 1; counts [2, 1], sums [3, 9].
    # count = 0.5 * [1, 1] + 0.5 * [2, 1] = [1.5, 1]
    # sum = 0.5 * [0, 10] + 0.5 * [3, 9] = [1.5, 9.5]
    out, variables = _train(vq, variables, z)
    np.testing.assert_array_equal(np.asarray(out.indices), [0, 0, 1])
    state = variables[STATE_COLLECTION]
    np.testing.assert_allclose(np.asarray(state["ema_count"]), [1.5, 1.0])
    np.testing.assert_allclose(np.asarray(state["ema_sum"]).ravel(), [1.5, 9.5])
    np.testing.assert_allclose(np.asarray(state["codebook"]).ravel(), [1.0, 9.5])
    # The loss is the commitment loss only; quantized used the codes from before the update.
    np.testing.assert_allclose(float(out.loss), 0.25 * (1 + 4 + 1) / 3, rtol=1e-6)
    # Step 2: same assignments; count = [1.75, 1], sum = [0.75 + 1.5, 4.75 + 4.5] = [2.25, 9.25].
    _, variables = _train(vq, variables, z)
    state = variables[STATE_COLLECTION]
    np.testing.assert_allclose(np.asarray(state["codebook"]).ravel(), [2.25 / 1.75, 9.25])


def test_ema_laplace_smoothing_hand_worked():
    vq = _vq(codebook_size=2, dim=1, use_ema=True, ema_decay=0.5, ema_epsilon=0.5)
    z = jnp.array([[1.0], [2.0], [9.0]])
    variables = _with_codebook(vq, _init(vq, z), [[0.0], [10.0]])
    _, variables = _train(vq, variables, z)
    # counts [1.5, 1], n = 2.5, smoothed = (c + 0.5) / (2.5 + 1) * 2.5 = [10/7, 15/14].
    np.testing.assert_allclose(
        np.asarray(variables[STATE_COLLECTION]["codebook"]).ravel(), [1.05, 9.5 * 14 / 15]
    )


def test_state_updates_only_when_training_and_mutable():
    vq = _vq(use_ema=True)
    z = jax.random.normal(KEY, (10, 8))
    variables = _init(vq, z)
    before = variables[STATE_COLLECTION]
    _, state = _apply(vq, variables, z, train=False, mutable=[STATE_COLLECTION])
    jax.tree.map(np.testing.assert_array_equal, state[STATE_COLLECTION], before)
    out_immutable = _apply(vq, variables, z, train=True)  # not mutable: runs, changes nothing
    assert out_immutable.indices.shape == (10,)
    _, state = _apply(vq, variables, z, train=True, mutable=[STATE_COLLECTION])
    assert not np.allclose(state[STATE_COLLECTION]["codebook"], before["codebook"])


@pytest.mark.parametrize("use_ema", [False, True])
def test_reseeding_revives_dead_codes(use_ema):
    vq = _vq(
        codebook_size=4,
        dim=2,
        use_ema=use_ema,
        reseed_dead_codes=True,
        usage_decay=0.0,
        dead_code_threshold=0.5,
        compute_metrics=True,
    )
    z = jnp.array([[0.0, 0.1], [2.0, 2.1], [-2.0, 1.9], [0.1, -2.0], [2.0, -1.9], [-2.0, -2.0]])
    far = [[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]
    variables = _with_codebook(vq, _init(vq, z), far)
    out, variables = _train(vq, variables, z)
    np.testing.assert_array_equal(np.asarray(out.indices), 0)  # only code 0 is ever chosen
    assert float(out.metrics["dead_codes"]) == 3.0
    codebook = np.asarray(_apply(vq, variables, method=vq.get_codebook))
    if use_ema:  # code 0 took its EMA step: (0.01 * sum(z)) / (0.99 + 0.01 * 6)
        np.testing.assert_allclose(codebook[0], np.array([0.1, -1.8]) / 105, rtol=1e-4)
    else:
        np.testing.assert_array_equal(codebook[0], [0.0, 0.0])
    for code in codebook[1:]:  # reseeded from this batch's encodings
        assert np.min(np.max(np.abs(np.asarray(z) - code), axis=-1)) < 1e-5
    after = _apply(vq, variables, z)
    assert len(np.unique(np.asarray(after.indices))) >= 2
    assert float(after.metrics["codebook_usage_batch"]) > 0.25
    if not use_ema:  # the trained parameter is untouched; the correction holds the change
        np.testing.assert_array_equal(np.asarray(variables["params"]["codebook"]), far)


@pytest.mark.parametrize("use_ema", [False, True])
def test_uvim_splitting_replaces_unused_codes_by_copies_of_the_most_used(use_ema):
    vq = _vq(
        codebook_size=4,
        dim=3,
        use_ema=use_ema,
        split_codes=True,
        usage_decay=0.0,
        dead_code_threshold=0.5,
        split_perturbation=1e-3,
    )
    z = jnp.array([[1.0, 2.0, 3.0]] * 8)
    far = [[1.0, 2.0, 3.0], [50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0]]
    variables = _with_codebook(vq, _init(vq, z), far)
    _, variables = _train(vq, variables, z)
    # usage [8, 0, 0, 0] -> [4, 4, 0, 0] -> [2, 4, 2, 0] -> [2, 2, 2, 2]
    np.testing.assert_allclose(np.asarray(variables[STATE_COLLECTION]["usage"]), [2.0] * 4)
    codebook = np.asarray(_apply(vq, variables, method=vq.get_codebook))
    np.testing.assert_allclose(codebook, np.tile([[1.0, 2.0, 3.0]], (4, 1)), rtol=2.1e-3)
    assert len({tuple(row) for row in codebook.tolist()}) == 4  # perturbed: all distinct
    if use_ema:
        state = variables[STATE_COLLECTION]
        # Each code keeps sum / count equal to its codeword.
        ratio = np.asarray(state["ema_sum"]) / np.asarray(state["ema_count"])[:, None]
        np.testing.assert_allclose(ratio, np.asarray(state["codebook"]), rtol=1e-3)


def test_entropy_penalty_sign_and_value():
    penalty = jax.jit(vq_lib.entropy_penalty, static_argnums=1)
    num_codes = 4
    # Confident and spread over all codes: per-sample entropy 0, batch entropy log K.
    spread = np.where(np.eye(num_codes) > 0, 0.0, 100.0).astype(np.float32)
    # Confident but collapsed on one code: both entropies 0.
    collapsed = np.tile(np.array([[0.0, 100.0, 100.0, 100.0]], np.float32), (4, 1))
    # Uniformly unsure: both entropies log K.
    unsure = np.zeros((4, 4), np.float32)  # (temperature does not matter here)
    batched = jax.jit(jax.vmap(lambda d: vq_lib.entropy_penalty(d, 0.01)))
    values = [float(x) for x in batched(jnp.stack([spread, collapsed, unsure]))]
    np.testing.assert_allclose(values[0], -np.log(num_codes), rtol=1e-5)
    assert abs(values[1]) < 1e-6 and abs(values[2]) < 1e-6
    # Random distances against a numpy reference.
    distances = np.random.default_rng(0).uniform(0, 3, (7, 5)).astype(np.float32)
    logits = -distances / 0.5
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    sample = -np.mean(np.sum(probs * np.log(probs), -1))
    avg = probs.mean(0)
    expected = sample + np.sum(avg * np.log(avg))
    np.testing.assert_allclose(float(penalty(jnp.asarray(distances), 0.5)), expected, rtol=1e-5)


def test_entropy_penalty_enters_the_loss_with_its_weight():
    z = jax.random.normal(KEY, (32, 8))
    plain = _vq()
    weighted = _vq(entropy_weight=0.3, entropy_temperature=0.5)
    variables = _init(plain, z)
    out_plain = _apply(plain, variables, z)
    out = _apply(weighted, variables, z)
    penalty = float(out.metrics["entropy_penalty"])
    assert -np.log(16) <= penalty <= np.log(16)
    np.testing.assert_allclose(float(out.loss), float(out_plain.loss) + 0.3 * penalty, rtol=1e-5)
    # Same value from brute-force numpy distances.
    codebook = np.asarray(variables["params"]["codebook"], np.float64)
    distances = np.sum((np.asarray(z, np.float64)[:, None] - codebook[None]) ** 2, axis=-1)
    logits = -distances / 0.5
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    probs = np.exp(log_probs)
    avg = probs.mean(0)
    expected = -np.mean(np.sum(probs * log_probs, -1)) + np.sum(avg * np.log(avg))
    np.testing.assert_allclose(penalty, expected, rtol=1e-4, atol=1e-5)
    # Its gradient reaches both the encodings and the codebook.
    grads = jax.jit(
        jax.grad(
            lambda p, z: weighted.apply({"params": p}, z).metrics["entropy_penalty"],
            argnums=(0, 1),
        )
    )(variables["params"], z)
    assert float(jnp.abs(grads[0]["codebook"]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) > 0


@pytest.mark.parametrize("use_ema", [False, True])
def test_kmeans_init_on_first_batch(use_ema):
    centres = np.array([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]], np.float32)
    noise = np.asarray(jax.random.normal(KEY, (4, 25, 2))) * 0.1
    z = jnp.asarray((centres[:, None, :] + noise).reshape(100, 2))
    vq = _vq(codebook_size=4, dim=2, use_ema=use_ema, kmeans_init=True, kmeans_iterations=10)
    variables = _init(vq, z)
    assert not bool(variables[STATE_COLLECTION]["initialized"])
    before = float(_apply(vq, variables, z).metrics["commitment_loss"])
    out, variables = _train(vq, variables, z)
    assert bool(variables[STATE_COLLECTION]["initialized"])
    after = float(out.metrics["commitment_loss"])  # the first batch already uses the k-means codes
    assert after < before
    codebook = np.asarray(_apply(vq, variables, method=vq.get_codebook))
    # A Lloyd fixed point: each used code is the mean of the points assigned to it.
    assign = brute_force_nearest(np.asarray(z), codebook)
    for code in np.unique(assign):
        np.testing.assert_allclose(
            codebook[code], np.asarray(z)[assign == code].mean(0), rtol=1e-4, atol=1e-4
        )
    # Later batches do not re-run k-means.
    shifted = z + 100.0
    _, later = _train(vq, variables, shifted)
    if not use_ema:
        np.testing.assert_array_equal(
            np.asarray(_apply(vq, later, method=vq.get_codebook)), codebook
        )


def test_round_trip_and_bfloat16():
    vq = _vq(codebook_size=32, dim=8)
    z = jax.random.normal(KEY, (4, 5, 8))
    variables = _init(vq, z)
    codes = _apply(vq, variables, jnp.arange(32), method=vq.indices_to_codes)
    np.testing.assert_array_equal(
        np.asarray(_apply(vq, variables, codes, method=vq.codes_to_indices)), np.arange(32)
    )
    out = _apply(vq, variables, z.astype(jnp.bfloat16))
    ref = _apply(vq, variables, z.astype(jnp.bfloat16).astype(jnp.float32))
    assert out.quantized.dtype == jnp.bfloat16 and out.loss.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out.indices), np.asarray(ref.indices))


def test_errors_name_the_problem():
    vq = _vq()
    with pytest.raises(ValueError, match="last dimension must equal dim=8"):
        _init(vq, jnp.zeros((3, 7)))
    for field, value, match in [
        ("codebook_size", 0, "codebook_size"),
        ("ema_decay", 1.0, "ema_decay"),
        ("beta", -1.0, "beta"),
        ("entropy_temperature", 0.0, "entropy_temperature"),
    ]:
        with pytest.raises(ValueError, match=match):
            _vq(**{field: value})
    checked = _vq(check_indices=True)
    variables = _init(checked, jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="out of range \\[0, 16\\)"):
        checked.apply(variables, jnp.array([16]), method=checked.indices_to_codes)
    reseeding = _vq(reseed_dead_codes=True)
    variables = _init(reseeding, jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="rng named 'quantizer'"):
        reseeding.apply(variables, jnp.zeros((2, 8)), train=True, mutable=[STATE_COLLECTION])


def test_sharded_training_step_matches_single_device():
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    vq = _vq(  # every unused code is dead at once, so the step reseeds across shards
        codebook_size=64,
        dim=8,
        use_ema=True,
        reseed_dead_codes=True,
        usage_decay=0.0,
        dead_code_threshold=0.5,
    )
    z = jax.random.normal(KEY, (16, 4, 8))
    variables = _init(vq, z)

    @jax.jit
    def step(variables, z, rng):
        def loss_fn(z):
            out, state = vq.apply(
                variables, z, train=True, mutable=[STATE_COLLECTION], rngs={RNG_STREAM: rng}
            )
            return jnp.sum(out.quantized**2) + out.loss, (out, state)

        (_, (out, state)), grad = jax.value_and_grad(loss_fn, has_aux=True)(z)
        return out, state, grad

    rng = jax.random.PRNGKey(5)
    single = step(variables, z, rng)
    z_sharded = jax.device_put(z, NamedSharding(mesh, PartitionSpec("data")))
    replicated = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    sharded = step(replicated, z_sharded, rng)
    assert len(z_sharded.sharding.device_set) == 8
    assert float(single[0].metrics["dead_codes"]) > 0
    np.testing.assert_array_equal(np.asarray(sharded[0].indices), np.asarray(single[0].indices))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
        (sharded[0].quantized, sharded[0].loss, sharded[1], sharded[2]),
        (single[0].quantized, single[0].loss, single[1], single[2]),
    )


def test_uvim_preset_splits_an_unused_code_after_460_batches_as_uvim():
    """UViM: counts start at 1, decay 0.995, a code is dead below 0.1 discounted hits, i.e. after
    ceil(log 0.1 / log 0.995) = 460 batches without a hit. The preset's usage EMA must agree."""
    from configs.uvim import depth

    preset = depth.get_config("vq,tiny").quantizer.vq
    config = quantizers.config(
        "vq", codebook_size=4, dim=3, compute_metrics=False, use_ema=True, split_codes=True,
        **{k: preset[k] for k in ("usage_decay", "usage_init", "dead_code_threshold",
                                  "ema_decay")})
    vq = quantizers.build(config)
    z = jnp.array([[1.0, 2.0, 3.0]] * 8)
    far = [[1.0, 2.0, 3.0], [50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0]]
    variables = _with_codebook(vq, _init(vq, z), far)

    def step(state, _):
        _, updated = vq.apply({**variables, STATE_COLLECTION: state}, z, train=True,
                              mutable=[STATE_COLLECTION], rngs={RNG_STREAM: KEY})
        return updated[STATE_COLLECTION], jnp.min(updated[STATE_COLLECTION]["usage"])

    _, lowest = jax.jit(lambda s: jax.lax.scan(step, s, None, length=462))(
        variables[STATE_COLLECTION])
    lowest = np.asarray(lowest)
    # Batch t (1-based) leaves an unused code at 5e-3 * 0.995^t: still alive at t = 459, split
    # (so no code below the threshold afterwards, and usage re-spread) from t = 460 on.
    expected_459 = 5e-3 * 0.995**459
    np.testing.assert_allclose(lowest[458], expected_459, rtol=1e-4)
    assert expected_459 > 5e-4 > 5e-3 * 0.995**460
    assert lowest[459] > 5e-4 and lowest[461] > 5e-4
