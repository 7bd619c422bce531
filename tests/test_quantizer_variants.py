"""Residual FSQ, LFQ and the registry: shapes, exact codes, losses, configs and errors."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fsq_jax import quantizers
from fsq_jax.quantizers import FSQ, LFQ, VQ, ResidualFSQ
from fsq_jax.quantizers import lfq as lfq_lib

KEY = jax.random.PRNGKey(0)


# -- residual FSQ --------------------------------------------------------------------------------


def test_residual_first_stage_is_fsq_and_scales_are_per_level():
    levels = (8, 5, 5, 5)
    residual = ResidualFSQ(levels=levels, num_stages=3)
    np.testing.assert_allclose(
        residual.stage_scales(),
        np.array([[1, 1, 1, 1], [1 / 7, 1 / 4, 1 / 4, 1 / 4], [1 / 49, 1 / 16, 1 / 16, 1 / 16]]),
        rtol=1e-7,
    )
    geometric = ResidualFSQ(levels=levels, num_stages=3, scaling="geometric", scale_factor=0.5)
    np.testing.assert_allclose(geometric.stage_scales()[:, 0], [1, 0.5, 0.25])
    z = jax.random.normal(KEY, (10, 4))
    out = jax.jit(residual.apply)({}, z)
    single = jax.jit(FSQ(levels=levels).apply)({}, z)
    assert out.indices.shape == (10, 3) and out.indices.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out.indices[:, 0]), np.asarray(single.indices))
    assert residual.codebook_size == 1000 and residual.num_codebooks == 3


def test_residual_stages_resolve_finer_residuals():
    z = jax.random.uniform(KEY, (2000, 4), minval=-0.9, maxval=0.9)
    errors = []
    for num_stages in (1, 2, 3):
        out = jax.jit(ResidualFSQ(levels=(8, 5, 5, 5), num_stages=num_stages).apply)({}, z)
        errors.append(float(jnp.mean(jnp.abs(out.quantized - z))))
    assert errors[1] < 0.5 * errors[0] and errors[2] < 0.6 * errors[1], errors


@pytest.mark.parametrize("levels", [(2, 2), (3, 3), (8, 5, 5, 5), (8, 8, 8, 6, 5), (2, 3, 4, 8)])
def test_residual_error_strictly_falls_with_every_doubling_of_stages(levels):
    z = jax.random.normal(KEY, (4096, len(levels)))
    errors = []
    for num_stages in (1, 2, 4, 8):
        out = jax.jit(ResidualFSQ(levels=levels, num_stages=num_stages).apply)({}, z)
        errors.append(float(jnp.mean(jnp.abs(out.quantized - z))))
    # Strictly, and by more than float noise: a stage that never refines leaves the error as is.
    assert all(b < a * (1 - 1e-3) for a, b in itertools.pairwise(errors)), errors


def test_residual_stage_scale_is_below_the_previous_step_for_every_level():
    for level in range(2, 65):
        scales = ResidualFSQ(levels=(level,), num_stages=3).stage_scales()[:, 0].astype(np.float64)
        steps = scales / (level // 2)  # one grid step of each stage
        assert np.all(scales[1:] < steps[:-1]), (level, scales, steps)
        # Level 2 halves its scale each stage; L >= 3 follows (L - 1) ** -k.
        np.testing.assert_allclose(scales, max(level - 1, 2) ** -np.arange(3.0), rtol=1e-7)


def test_residual_indices_codes_round_trip():
    levels = (5, 4, 3, 2)
    residual = ResidualFSQ(levels=levels, num_stages=3)
    size = residual.codebook_size
    # indices -> codes -> indices is the identity on every per-stage index.
    every = jnp.arange(size)
    indices = jnp.stack([every, (every * 7) % size, size - 1 - every], axis=-1)
    codes = jax.jit(residual.indices_to_codes)(indices)
    assert codes.shape == (size, 3, 4) and codes.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(jax.jit(residual.codes_to_indices)(codes)), indices)
    # codes -> indices -> codes is the identity on grid points (each stage a code of the FSQ grid).
    grid = np.asarray(FSQ(levels=levels).indices_to_codes(jnp.arange(size)))
    picks = np.asarray(jax.random.randint(KEY, (50, 2, 3), 0, size))
    grid_codes = jnp.asarray(grid[picks])  # [50, 2, 3 stages, 4]
    np.testing.assert_array_equal(
        np.asarray(residual.indices_to_codes(residual.codes_to_indices(grid_codes))), grid_codes
    )


def test_residual_codes_indices_round_trip_and_gradient():
    residual = ResidualFSQ(levels=(5, 4, 3, 2), num_stages=4, check_indices=True)
    z = jax.random.normal(KEY, (6, 7, 4)) * 0.7
    unchecked = ResidualFSQ(levels=(5, 4, 3, 2), num_stages=4)

    @jax.jit
    def run(z):
        out = unchecked.apply({}, z)
        grad = jax.grad(lambda z: jnp.sum(unchecked.apply({}, z).quantized))(z)
        codes = unchecked.indices_to_codes(out.indices)
        return (
            out,
            codes,
            unchecked.codes_to_indices(codes),
            unchecked.indices_to_quantized(out.indices),
            grad,
        )

    out, codes, indices, quantized, grad = run(z)
    per_stage = FSQ(levels=(5, 4, 3, 2)).indices_to_codes(out.indices)  # [..., stages, d]
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(per_stage))
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(out.indices))
    # The decoder's vector is bitwise the forward pass's output, stage by stage.
    np.testing.assert_array_equal(np.asarray(quantized), np.asarray(out.quantized))
    np.testing.assert_array_equal(
        np.asarray(quantized),
        np.asarray(sum(per_stage[..., k, :] * unchecked.stage_scales()[k] for k in range(4))),
    )
    assert bool(jnp.all(grad > 0))
    for method in (residual.indices_to_codes, residual.indices_to_quantized):
        with pytest.raises(ValueError, match="num_stages=4"):
            method(jnp.zeros((4, 3), jnp.int32))
        with pytest.raises(ValueError, match="out of range"):
            method(jnp.array([[0, 120, 0, 0]]))


def test_residual_bad_values():
    with pytest.raises(ValueError, match="num_stages"):
        ResidualFSQ(num_stages=0)
    with pytest.raises(ValueError, match="scaling"):
        ResidualFSQ(scaling="linear")
    with pytest.raises(ValueError, match="scale_factor"):
        ResidualFSQ(scaling="geometric", scale_factor=1.5)
    with pytest.raises(ValueError, match="levels must all be >= 2"):
        ResidualFSQ(levels=(1, 3))


# -- LFQ ---------------------------------------------------------------------------------------


def test_lfq_codes_are_signs_and_indices_are_bits():
    lfq = LFQ(dim=3)
    out = jax.jit(lfq.apply)(
        {}, jnp.array([[0.5, -2.0, 3.0], [-1.0, -1.0, -1.0], [1e-3, 2.0, 7.0]])
    )
    np.testing.assert_array_equal(np.asarray(out.quantized), [[1, -1, 1], [-1, -1, -1], [1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(out.indices), [0b101, 0, 0b111])
    assert lfq.codebook_size == 8
    all_codes, indices = jax.jit(
        lambda i: (lfq.indices_to_codes(i), lfq.codes_to_indices(lfq.indices_to_codes(i)))
    )(jnp.arange(8))
    assert {tuple(c) for c in np.asarray(all_codes).tolist()} == set(
        itertools.product([-1.0, 1.0], repeat=3)
    )
    np.testing.assert_array_equal(np.asarray(indices), np.arange(8))
    grad = jax.jit(jax.grad(lambda z: jnp.sum(lfq.apply({}, z).quantized * jnp.arange(3.0))))(
        jnp.ones((2, 3))
    )
    np.testing.assert_array_equal(np.asarray(grad), [[0, 1, 2], [0, 1, 2]])


def test_lfq_round_trip_every_index_dim_10():
    lfq = LFQ(dim=10)
    indices = jax.jit(lambda i: lfq.codes_to_indices(lfq.indices_to_codes(i)))(jnp.arange(1024))
    np.testing.assert_array_equal(np.asarray(indices), np.arange(1024))


def _brute_force_entropies(z: np.ndarray, inv_temperature: float):
    codes = np.array(list(itertools.product([-1.0, 1.0], repeat=z.shape[1])))
    logits = -inv_temperature * np.sum((z[:, None, :] - codes[None]) ** 2, axis=-1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    plogp = lambda p: np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)
    sample = -np.mean(np.sum(plogp(probs), -1))
    codebook = -np.sum(plogp(probs.mean(0)))
    return sample, codebook


def test_lfq_entropy_terms_match_brute_force():
    z = np.asarray(jax.random.normal(KEY, (20, 4))) * 0.3
    sample, codebook = lfq_lib.lfq_entropy_terms(jnp.asarray(z), 2.0, max_exact_dim=12)
    ref_sample, ref_codebook = _brute_force_entropies(z, 2.0)
    np.testing.assert_allclose(float(sample), ref_sample, rtol=1e-5)
    np.testing.assert_allclose(float(codebook), ref_codebook, rtol=1e-5)
    # Above max_exact_dim the codebook entropy is the factorised upper bound.
    _, bound = lfq_lib.lfq_entropy_terms(jnp.asarray(z), 2.0, max_exact_dim=2)
    assert float(bound) >= ref_codebook - 1e-5


def test_lfq_entropy_loss_sign():
    lfq = LFQ(dim=4, entropy_weight=1.0, commitment_weight=0.0, inv_temperature=10.0)
    codes = np.asarray(lfq.indices_to_codes(jnp.arange(16)))
    apply = jax.jit(lfq.apply)
    diverse = apply({}, jnp.asarray(codes))  # confident, every code once
    collapsed = apply({}, jnp.asarray(np.tile(codes[:1], (16, 1))))  # confident, one code
    unsure = apply({}, jnp.zeros((16, 4)))  # every assignment uniform
    np.testing.assert_allclose(float(diverse.loss), -4 * np.log(2), rtol=1e-4)
    assert abs(float(collapsed.loss)) < 1e-4
    assert abs(float(unsure.loss)) < 1e-4  # both entropies log 16
    assert float(diverse.loss) < float(collapsed.loss)
    np.testing.assert_allclose(float(diverse.metrics["perplexity"]), 16, rtol=1e-5)


def test_lfq_commitment_loss():
    lfq = LFQ(dim=2, entropy_weight=0.0, commitment_weight=0.5)
    out = lfq.apply({}, jnp.array([[0.5, -2.0]]))
    np.testing.assert_allclose(float(out.loss), 0.5 * (0.25 + 1.0) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="dim=2"):
        lfq.apply({}, jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="dim"):
        LFQ(dim=40)


# -- registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", quantizers.NAMES)
def test_default_configs_complete_and_buildable(name):
    fields = quantizers.default_config(name)
    assert isinstance(fields, ml_collections.ConfigDict)
    for key, value in fields.items():
        assert value is not None, f"{name}.{key} has no default"
    config = quantizers.config(name)
    assert config.name == name and set(config) == {"name", *quantizers.NAMES}
    module = quantizers.build(config)
    assert type(module) is quantizers.QUANTIZERS[name]
    dim = quantizers.code_dim(config)
    assert dim == module.dim and quantizers.codebook_size(config) == module.codebook_size
    z = jnp.zeros((2, 3, dim))
    variables = jax.jit(module.init)({"params": KEY, quantizers.RNG_STREAM: KEY}, z)
    out = jax.jit(module.apply)(variables, z)
    assert isinstance(out, quantizers.QuantizerOutput)
    assert out.quantized.shape == z.shape and out.indices.dtype == jnp.int32
    assert out.loss.shape == () and out.loss.dtype == jnp.float32
    assert all(v.shape == () for v in out.metrics.values())


@pytest.mark.parametrize("name", quantizers.NAMES)
def test_config_fields_are_the_module_fields(name):
    """Declared once: the config fields and defaults are the module's own dataclass fields."""
    module = quantizers.QUANTIZERS[name]()
    fields = quantizers.default_config(name)
    for key, value in fields.items():
        assert getattr(module, key) == value


@pytest.mark.parametrize("name", quantizers.NAMES)
def test_indices_to_quantized_is_the_forward_output_and_codes_round_trip(name):
    config = quantizers.config(name)
    module = quantizers.build(config)
    z = jax.random.normal(KEY, (3, 5, quantizers.code_dim(config)))
    variables = jax.jit(module.init)({"params": KEY, quantizers.RNG_STREAM: KEY}, z)

    @jax.jit
    def run(variables, z):
        out = module.apply(variables, z)
        codes = module.apply(variables, out.indices, method=module.indices_to_codes)
        return (
            out,
            module.apply(variables, out.indices, method=module.indices_to_quantized),
            module.apply(variables, codes, method=module.codes_to_indices),
        )

    out, quantized, indices = run(variables, z)
    # What a decoder gets from the tokens is exactly what it got from the forward pass.
    np.testing.assert_array_equal(np.asarray(quantized), np.asarray(out.quantized))
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(out.indices))


def test_code_dim_values():
    assert quantizers.code_dim(quantizers.config("fsq")) == 4
    assert quantizers.code_dim(quantizers.config("vq")) == 256
    assert quantizers.code_dim(quantizers.config("lfq")) == 10
    assert quantizers.code_dim(quantizers.config("residual_fsq", levels=(7, 5, 5, 5, 5))) == 5


def test_name_swaps_the_quantizer_of_a_section():
    config = quantizers.config("fsq", levels=(8, 8, 8, 5, 5, 5))
    assert quantizers.codebook_size(config) == 64000
    config.name = "vq"
    assert isinstance(quantizers.build(config), VQ) and quantizers.codebook_size(config) == 1024


def test_build_accepts_overrides_and_lists():
    config = quantizers.config("fsq")
    config.fsq.levels = [8, 8, 8, 5, 5, 5]  # lists (e.g. from JSON) become tuples
    fsq = quantizers.build(config)
    assert fsq.codebook_size == 64000 and tuple(fsq.levels) == (8, 8, 8, 5, 5, 5)
    vq = quantizers.build(quantizers.config("vq", codebook_size=8, dim=3, use_ema=True))
    assert vq.codebook_size == 8 and vq.dim == 3 and vq.use_ema


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="'fsq2'"):
        quantizers.default_config("fsq2")
    with pytest.raises(ValueError, match="'kmeans': not a registered quantizer"):
        quantizers.build({"name": "kmeans"})
    bad = quantizers.config("fsq")
    bad.fsq.levles = (8, 5)
    with pytest.raises(ValueError, match=r"quantizer.fsq.levles: unknown field; did you mean"):
        quantizers.build(bad)
    with pytest.raises(ValueError, match="codebook_size"):
        quantizers.build(quantizers.config("vq", codebook_size=-3))
    with pytest.raises(ValueError, match="levels must all be >= 2"):
        quantizers.code_dim(quantizers.config("residual_fsq", levels=(1, 2)))
    # Values of the wrong type, as a hand-written config.json could hold them.
    for name, field, value, message in (("vq", "use_ema", "yes", "must be bool"),
                                        ("lfq", "dim", 10.5, "must be int"),
                                        ("fsq", "shift", 1.0, "must be str")):
        raw = quantizers.config(name).to_dict()
        raw[name][field] = value
        with pytest.raises(ValueError, match=f"quantizer.{name}.{field} = .*: {message}"):
            quantizers.build(ml_collections.ConfigDict(raw))
    with pytest.raises(ValueError, match="floating dtype"):
        quantizers.build(quantizers.config("fsq")).apply({}, jnp.zeros((2, 4), jnp.int32))
