"""FSQ: golden values, exact index arithmetic, grid properties, transforms, bf16 and sharding."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsq_jax import quantizers
from fsq_jax.quantizers import FSQ
from fsq_jax.quantizers import fsq as fsq_lib

# paper.md Table 1 (2^4 .. 2^16) plus a few odd ones (binary, single channel, large level).
TABLE_1 = [
    (5, 3),
    (8, 8),
    (8, 6, 5),
    (8, 8, 8),
    (8, 5, 5, 5),
    (8, 8, 6, 5),
    (7, 5, 5, 5, 5),
    (8, 8, 8, 6, 5),
    (8, 8, 8, 5, 5, 5),
]
OTHER_LEVELS = [(2,), (2, 2, 2), (3,), (16, 3), (255,)]


def assert_on_grid(codes: np.ndarray, levels) -> None:
    """codes [..., d] are exactly q * float32(1 / (L // 2)) with integer q in [-L//2, L-1-L//2]."""
    half_width = (np.asarray(levels) // 2).astype(np.float32)
    q = np.round(codes.astype(np.float64) * half_width)
    reciprocal = (1.0 / half_width.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(codes, q.astype(np.float32) * reciprocal)
    assert np.all(q >= -half_width) and np.all(q <= np.asarray(levels) - 1 - half_width)
    assert np.all(np.abs(codes) <= 1.0)


def _apply(fsq: FSQ, z):
    return fsq.apply({}, jnp.asarray(z, jnp.float32))


@pytest.mark.parametrize("shift", ["tan", "atanh"])
@pytest.mark.parametrize(
    "levels, z, codes, index",
    [
        ((3, 5, 4), [0.25, 0.6, -7.0], [0.0, 0.5, -1.0], 10),
        ((8, 5, 5, 5), [0.0] * 4, [0.0] * 4, 500),
        ((8, 5, 5, 5), [10.0] * 4, [0.75, 1.0, 1.0, 1.0], 999),
        ((8, 5, 5, 5), [-10.0] * 4, [-1.0] * 4, 0),
    ],
)
def test_golden_values(levels, z, codes, index, shift):
    out = _apply(FSQ(levels=levels, shift=shift), z)
    np.testing.assert_array_equal(np.asarray(out.quantized), np.asarray(codes, np.float32))
    assert out.quantized.dtype == jnp.float32
    assert out.indices.dtype == jnp.int32 and int(out.indices) == index
    assert float(out.loss) == 0.0 and out.loss.dtype == jnp.float32


def test_build_default_is_paper_fsq():
    config = quantizers.config("fsq")
    fsq = quantizers.build(config)
    assert isinstance(fsq, FSQ) and tuple(fsq.levels) == (8, 5, 5, 5)
    assert fsq.codebook_size == 1000 and quantizers.code_dim(config) == 4
    out = fsq.apply({}, jnp.full((2, 4), 10.0))
    np.testing.assert_array_equal(np.asarray(out.indices), [999, 999])


def test_bound_constants_match_formula():
    # L=8: half_l = 7 * 0.999 / 2, offset 0.5, shift tan(0.5 / half_l); L=5: no offset or shift.
    z = jnp.array([0.3, 0.3])
    half_l8 = 7 * 0.999 / 2
    expected8 = np.tanh(0.3 + np.tan(0.5 / half_l8)) * half_l8 - 0.5
    expected5 = np.tanh(0.3) * 4 * 0.999 / 2
    got = fsq_lib.fsq_bound(z, (8, 5))
    np.testing.assert_allclose(np.asarray(got), [expected8, expected5], rtol=1e-6)
    # The atanh shift differs from tan by about 1e-5 for L = 8 (paper.md).
    diff = np.arctanh(0.5 / half_l8) - np.tan(0.5 / half_l8)
    assert 1e-6 < abs(diff) < 1e-4


@pytest.mark.parametrize("levels", TABLE_1 + OTHER_LEVELS)
def test_round_trip_every_index(levels):
    fsq = FSQ(levels=levels)
    size = math.prod(levels)
    assert fsq.codebook_size == size
    codes, indices = jax.jit(
        lambda i: (fsq.indices_to_codes(i), fsq.codes_to_indices(fsq.indices_to_codes(i)))
    )(jnp.arange(size, dtype=jnp.int32))
    assert codes.shape == (size, len(levels)) and indices.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(indices), np.arange(size))
    # Every code is a distinct point of the normalised grid within [-1, 1].
    assert_on_grid(np.asarray(codes), levels)
    assert len(np.unique(np.asarray(codes), axis=0)) == size


@pytest.mark.parametrize("levels", [(5, 3), (8, 6, 5), (8, 5, 5, 5), (7, 5, 5, 5, 5), (2, 3, 4)])
def test_every_code_is_reachable(levels):
    """Inverting the bound at each grid point and quantizing gives back every index in order."""
    fsq = FSQ(levels=levels)
    codes = np.asarray(jax.jit(fsq.indices_to_codes)(jnp.arange(fsq.codebook_size)), np.float64)
    levels_np = np.asarray(levels, np.float64)
    half_l = (levels_np - 1) * (1 - 1e-3) / 2
    offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0)
    shift = np.tan(offset / half_l)
    q = codes * (np.asarray(levels) // 2)
    # Edge codes are reached only as tanh saturates: aim just inside the bound's range.
    z = np.arctanh(np.clip((q + offset) / half_l, -1 + 1e-4, 1 - 1e-4)) - shift
    out = jax.jit(fsq.apply)({}, jnp.asarray(z, jnp.float32))
    np.testing.assert_array_equal(np.asarray(out.indices), np.arange(fsq.codebook_size))
    np.testing.assert_array_equal(np.asarray(out.quantized), codes.astype(np.float32))


def test_indices_exact_at_int32_limit():
    levels = (65536, 32768)  # 2^31 codes: the largest index is 2^31 - 1.
    fsq = FSQ(levels=levels)
    top = jnp.array([2**31 - 1, 2**31 - 2, 2**24 + 1, 0], jnp.int32)
    codes = fsq.indices_to_codes(top)
    np.testing.assert_array_equal(np.asarray(fsq.codes_to_indices(codes)), np.asarray(top))
    np.testing.assert_array_equal(np.asarray(codes[0]), [32767 / 32768, 16383 / 16384])
    with pytest.raises(ValueError, match="int32"):
        FSQ(levels=(65536, 32769))


@pytest.mark.parametrize(
    "levels, match",
    [
        ((1, 5), "levels must all be >= 2"),
        ((8, 2.5), "integers|must be int"),
        ((8, "5"), "integers|must be int"),
        ((), "empty"),
    ],
)
def test_bad_levels(levels, match):
    with pytest.raises(ValueError, match=match):
        FSQ(levels=levels)
    config = quantizers.config("fsq", levels=levels)
    with pytest.raises(ValueError, match=match):
        quantizers.build(config)


def test_levels_not_a_sequence():
    with pytest.raises(ValueError, match="sequence"):
        FSQ(levels="85")


def test_atanh_shift_rejects_binary_levels():
    with pytest.raises(ValueError, match="atanh"):
        FSQ(levels=(2, 5), shift="atanh")


def test_float_integer_levels_accepted():
    assert FSQ(levels=(8.0, 5.0)).codebook_size == 40


def test_bad_inputs_name_the_problem():
    fsq = FSQ(levels=(8, 5, 5, 5))
    with pytest.raises(ValueError, match="last dimension must equal len\\(levels\\)=4"):
        fsq.apply({}, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="shift"):
        FSQ(shift="sin")
    checked = FSQ(levels=(8, 5, 5, 5), check_indices=True)
    with pytest.raises(ValueError, match="out of range \\[0, 1000\\)"):
        checked.indices_to_codes(jnp.array([3, 1000]))
    with pytest.raises(ValueError, match="out of range"):
        checked.indices_to_codes(np.array([-1]))
    np.testing.assert_array_equal(np.asarray(checked.indices_to_codes(jnp.array(500))), [0] * 4)
    # Under jit the check runs when the computation executes; the runtime error carries it.
    with pytest.raises(jax.errors.JaxRuntimeError, match="out of range"):
        jax.block_until_ready(jax.jit(checked.indices_to_codes)(jnp.array([5, 1000])))


def test_unchecked_out_of_range_wraps_not_raises():
    fsq = FSQ(levels=(8, 5, 5, 5))
    np.testing.assert_array_equal(
        np.asarray(fsq.indices_to_codes(jnp.array(1000 + 500))),
        np.asarray(fsq.indices_to_codes(jnp.array(500))),
    )


level_sets = st.lists(st.integers(3, 16), min_size=1, max_size=5).map(tuple)


@st.composite
def levels_and_inputs(draw):
    levels = draw(level_sets)
    z = draw(
        hnp.arrays(
            np.float32,
            (4, len(levels)),
            elements=st.floats(-20, 20, width=32, allow_nan=False),
        )
    )
    return levels, z


@settings(max_examples=12, deadline=None)
@given(levels_and_inputs(), st.sampled_from(["tan", "atanh"]))
def test_property_codes_on_grid(data, shift):
    levels, z = data
    fsq = FSQ(levels=levels, shift=shift, compute_metrics=False)

    @jax.jit
    def run(z):
        out = fsq.apply({}, z)
        return out, fsq.codes_to_indices(out.quantized), fsq.indices_to_codes(out.indices)

    out, indices_again, codes_again = run(jnp.asarray(z))
    codes = np.asarray(out.quantized)
    assert_on_grid(codes, levels)
    indices = np.asarray(out.indices)
    assert np.all((indices >= 0) & (indices < fsq.codebook_size))
    np.testing.assert_array_equal(indices, np.asarray(indices_again))
    np.testing.assert_array_equal(codes, np.asarray(codes_again))


@settings(max_examples=8, deadline=None)
@given(levels_and_inputs(), st.integers(0, 2**31 - 1))
def test_property_straight_through_gradient(data, seed):
    levels, z = data
    weights = np.random.default_rng(seed).normal(size=z.shape).astype(np.float32)
    fsq = FSQ(levels=levels, compute_metrics=False)
    half_width = (np.asarray(levels) // 2).astype(np.float32)

    def through_quantizer(z):
        return jnp.sum(weights * fsq.apply({}, z).quantized)

    def through_bound(z):
        return jnp.sum(weights * fsq_lib.fsq_bound(z, levels) / half_width)

    grads = jax.jit(lambda z: (jax.grad(through_quantizer)(z), jax.grad(through_bound)(z)))
    ours, expected = grads(jnp.asarray(z))
    np.testing.assert_allclose(
        np.asarray(ours),
        np.asarray(expected),
        rtol=1e-6,
        atol=1e-7,
    )


def test_eager_and_compiled_codes_agree_bit_for_bit():
    levels = (7, 6, 12, 13)  # half widths 3 and 6: the grid is not a power-of-two fraction
    fsq = FSQ(levels=levels)
    z = jax.random.normal(jax.random.PRNGKey(3), (5, 4)) * 2
    eager = np.asarray(fsq.apply({}, z).quantized)
    compiled = np.asarray(jax.jit(lambda z: fsq.apply({}, z).quantized)(z))
    np.testing.assert_array_equal(eager, compiled)
    np.testing.assert_array_equal(eager[0], np.asarray(fsq.apply({}, z[0]).quantized))
    assert_on_grid(eager, levels)


def test_jit_vmap_grad():
    fsq = FSQ(levels=(8, 5, 5, 5))
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 4)) * 2
    eager = fsq.apply({}, z)
    jitted = jax.jit(lambda z: fsq.apply({}, z))(z)
    mapped = jax.vmap(lambda zi: fsq.apply({}, zi))(z)
    for other in (jitted, mapped):
        np.testing.assert_array_equal(np.asarray(other.quantized), np.asarray(eager.quantized))
        np.testing.assert_array_equal(np.asarray(other.indices), np.asarray(eager.indices))
    grad = jax.jit(jax.grad(lambda z: jnp.sum(fsq.apply({}, z).quantized ** 2)))(z)
    assert grad.shape == z.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).sum()) > 0
    jit_round_trip = jax.jit(lambda i: fsq.codes_to_indices(fsq.indices_to_codes(i)))
    np.testing.assert_array_equal(np.asarray(jit_round_trip(eager.indices)), eager.indices)


def test_bfloat16_inputs_quantized_in_float32():
    fsq = FSQ(levels=(7, 5, 5, 5, 5))
    z = (jax.random.normal(jax.random.PRNGKey(1), (64, 5)) * 2).astype(jnp.bfloat16)
    apply = jax.jit(fsq.apply)
    out = apply({}, z)
    ref = apply({}, z.astype(jnp.float32))
    assert out.quantized.dtype == jnp.bfloat16 and out.indices.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out.indices), np.asarray(ref.indices))
    np.testing.assert_array_equal(
        np.asarray(out.quantized), np.asarray(ref.quantized.astype(jnp.bfloat16))
    )
    grad = jax.jit(jax.grad(lambda z: jnp.sum(fsq.apply({}, z).quantized.astype(jnp.float32))))(z)
    assert grad.dtype == jnp.bfloat16


def test_metrics_batch_perplexity():
    fsq = FSQ(levels=(3, 3))
    codes = np.asarray(fsq.indices_to_codes(jnp.array([0, 0, 4, 8])))
    z = jnp.asarray(np.arctanh(codes * 0.999 * 0.9))  # lands on the same codes
    out = jax.jit(fsq.apply)({}, z)
    np.testing.assert_array_equal(np.asarray(out.indices), [0, 0, 4, 8])
    probs = np.array([0.5, 0.25, 0.25])
    np.testing.assert_allclose(
        float(out.metrics["perplexity"]), np.exp(-np.sum(probs * np.log(probs))), rtol=1e-6
    )
    np.testing.assert_allclose(float(out.metrics["codebook_usage_batch"]), 3 / 9)
    big = FSQ(levels=(256, 256, 2))  # 2^17 codes: no per-batch histogram
    assert big.apply({}, jnp.zeros((2, 3))).metrics == {}


def test_sharded_over_eight_devices_matches_single_device():
    devices = np.asarray(jax.devices())
    assert devices.size == 8, "tests/conftest.py provides 8 CPU devices"
    mesh = Mesh(devices, ("data",))
    fsq = FSQ(levels=(8, 5, 5, 5))
    z = jax.random.normal(jax.random.PRNGKey(2), (16, 6, 4)) * 1.5

    def step(z):
        out = fsq.apply({}, z)
        grad = jax.grad(lambda z: jnp.sum(fsq.apply({}, z).quantized * z))(z)
        return out, grad

    single_out, single_grad = jax.jit(step)(z)
    z_sharded = jax.device_put(z, NamedSharding(mesh, PartitionSpec("data")))
    sharded_out, sharded_grad = jax.jit(step)(z_sharded)
    assert len(z_sharded.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(sharded_out.quantized), single_out.quantized)
    np.testing.assert_array_equal(np.asarray(sharded_out.indices), single_out.indices)
    np.testing.assert_allclose(np.asarray(sharded_grad), single_grad, rtol=1e-6)
    np.testing.assert_allclose(
        float(sharded_out.metrics["perplexity"]), float(single_out.metrics["perplexity"]), rtol=1e-6
    )
