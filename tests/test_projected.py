"""quantizers.Projected: any quantizer between two dense projections, as vector-quantize-pytorch's
`FSQ(levels, dim=...)`; straight-through gradients through both projections."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_jax import quantizers
from fsq_jax.quantizers.fsq import fsq_bound

LEVELS = (8, 5, 5, 5)


def _init(module, z):
    return module.init({"params": jax.random.key(0), quantizers.RNG_STREAM: jax.random.key(1)},
                       z)


def test_projected_fsq_shapes_indices_and_decoding():
    module = quantizers.Projected(quantizers.FSQ(levels=LEVELS), dim=32)
    z = jax.random.normal(jax.random.key(2), (2, 6, 6, 32)) * 3
    variables = _init(module, z)
    assert jax.tree.map(jnp.shape, variables["params"]) == {
        "project_in": {"kernel": (32, 4), "bias": (4,)},
        "project_out": {"kernel": (4, 32), "bias": (32,)}}
    out = module.apply(variables, z)
    assert out.quantized.shape == z.shape and out.indices.shape == (2, 6, 6)
    assert module.apply(variables, method=lambda m: m.codebook_size) == 1000
    # The indices are FSQ's indices of the projected input ...
    projected = z @ variables["params"]["project_in"]["kernel"] + variables["params"][
        "project_in"]["bias"]
    fsq = quantizers.FSQ(levels=LEVELS)
    np.testing.assert_array_equal(out.indices, fsq.apply({}, projected).indices)
    # ... and decoding them gives back the layer's output.
    decoded = module.apply(variables, out.indices, method="indices_to_quantized")
    np.testing.assert_allclose(decoded, out.quantized, atol=1e-6)
    codes = module.apply(variables, out.indices, method="indices_to_codes")
    np.testing.assert_array_equal(module.apply(variables, codes, method="codes_to_indices"),
                                  out.indices)


def test_gradients_flow_through_both_projections_and_the_quantizer():
    module = quantizers.Projected(quantizers.FSQ(levels=(5, 3)), dim=3)
    z = jnp.array([[0.3, -1.2, 2.0]])
    variables = _init(module, z)
    jacobian = jax.jacobian(lambda x: module.apply(variables, x).quantized[0])(z)[:, 0, :]
    w_in = variables["params"]["project_in"]["kernel"]
    w_out = variables["params"]["project_out"]["kernel"]
    projected = z @ w_in + variables["params"]["project_in"]["bias"]
    # FSQ's own (straight-through) Jacobian at the projected point: diagonal, non-zero.
    inner = jax.jacobian(lambda p: quantizers.FSQ(levels=(5, 3)).apply({}, p).quantized[0])(
        projected)[:, 0, :]
    assert np.all(np.diag(inner) > 0)
    # Chain rule: d out / d z = (W_in J W_out)^T.
    np.testing.assert_allclose(jacobian, (w_in @ inner @ w_out).T, rtol=1e-5, atol=1e-6)


def test_vq_keeps_its_loss_and_state_behind_projections():
    module = quantizers.Projected(quantizers.VQ(codebook_size=16, dim=4, use_ema=True), dim=8)
    z = jax.random.normal(jax.random.key(3), (64, 8))
    variables = _init(module, z)
    out, state = module.apply(variables, z, train=True,
                              mutable=[quantizers.STATE_COLLECTION])
    assert out.quantized.shape == (64, 8) and out.indices.shape == (64,)
    assert float(out.loss) > 0  # the commitment loss of the wrapped VQ
    assert quantizers.STATE_COLLECTION in state


def test_wrong_width_is_one_clear_error():
    module = quantizers.Projected(quantizers.FSQ(levels=LEVELS), dim=32)
    with pytest.raises(ValueError, match=r"z last dimension must be dim=32, got shape \(2, 16\)"):
        _init(module, jnp.zeros((2, 16)))


@pytest.mark.torch
def test_matches_vector_quantize_pytorch_fsq_with_dim():
    """Same projection weights -> same indices and outputs as vector-quantize-pytorch's
    FSQ(levels, dim). Its bound uses (1 + eps) and atanh where the official FSQ code (our
    default) uses (1 - eps) and tan, so the two may disagree on values within ~1e-3 of a
    rounding boundary; everywhere else they agree exactly."""
    torch = pytest.importorskip(
        "torch", reason="PARITY TESTS NOT RUN: torch is missing; `make extras` installs it")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    reference = vqp.FSQ(levels=list(LEVELS), dim=16)
    z = torch.randn(4, 256, 16) * 2
    with torch.no_grad():
        expected, expected_indices = reference(z)
    params = {"project_in": {"kernel": reference.project_in.weight.detach().numpy().T,
                             "bias": reference.project_in.bias.detach().numpy()},
              "project_out": {"kernel": reference.project_out.weight.detach().numpy().T,
                              "bias": reference.project_out.bias.detach().numpy()}}
    module = quantizers.Projected(quantizers.FSQ(levels=LEVELS, shift="atanh"), dim=16)
    out = module.apply({"params": params}, jnp.asarray(z.numpy()))
    same = np.asarray(out.indices) == expected_indices.numpy()
    assert same.mean() > 0.97, same.mean()
    np.testing.assert_allclose(np.asarray(out.quantized)[same], expected.numpy()[same],
                               atol=2e-5)
    # Where they differ, some channel sits within the two bounds' difference (0.2% of the
    # half range) of a rounding boundary.
    projected = jnp.asarray(z.numpy()) @ params["project_in"]["kernel"] + params["project_in"][
        "bias"]
    bounded = np.asarray(fsq_bound(projected, LEVELS, 1e-3, "atanh"))[~same]
    to_boundary = np.abs(bounded - np.floor(bounded) - 0.5).min(axis=-1)
    assert np.all(to_boundary < 0.01), to_boundary
