"""A tiny autoencoder with each quantizer as its bottleneck learns: the loss falls."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fsq_jax import codebook, quantizers
from fsq_jax.quantizers import RNG_STREAM, STATE_COLLECTION


class TinyAutoencoder(nn.Module):
    """x: [B, 16] -> dense -> quantizer (code_dim channels) -> dense -> [B, 16]."""

    quantizer: ml_collections.ConfigDict
    width: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.gelu(nn.Dense(self.width)(x))
        z = nn.Dense(quantizers.code_dim(self.quantizer))(h)
        out = quantizers.build(self.quantizer)(z, train=train)
        h = nn.gelu(nn.Dense(self.width)(out.quantized))
        return nn.Dense(x.shape[-1])(h), out


def _data(step: jax.Array, batch: int = 128) -> jax.Array:
    """Points on a 3-d manifold embedded in 16-d, a fresh batch per step: [batch, 16]."""
    mixing = jax.random.normal(jax.random.PRNGKey(42), (3, 16))
    sources = jax.random.uniform(jax.random.PRNGKey(step), (batch, 3), minval=-1, maxval=1)
    return jnp.tanh(sources @ mixing)


def _train(config: ml_collections.ConfigDict, steps: int, learning_rate: float = 3e-3):
    """Trains for `steps` steps inside one compiled scan.

    Returns:
      (losses [steps] reconstruction MSE per step, code counts [K] over the last 20 batches).
    """
    model = TinyAutoencoder(config)
    size = quantizers.codebook_size(config)
    rng = jax.random.PRNGKey(0)
    variables = jax.jit(model.init)({"params": rng, RNG_STREAM: rng}, _data(0))
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    optimizer = optax.adam(learning_rate)

    def step(carry, i):
        params, state, opt_state, counts = carry
        x = _data(i + 1)

        def loss_fn(params):
            (recon, out), new_state = model.apply(
                {"params": params, **state},
                x,
                train=True,
                mutable=[STATE_COLLECTION],
                rngs={RNG_STREAM: jax.random.PRNGKey(i)},
            )
            mse = jnp.mean((recon - x) ** 2)
            return mse + out.loss, (mse, out.indices, new_state)

        grads, (mse, indices, new_state) = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        counts = counts + jnp.where(i >= steps - 20, codebook.histogram(indices, size), 0)
        new_carry = (optax.apply_updates(params, updates), {**state, **new_state}, opt_state)
        return (*new_carry, counts), mse

    @jax.jit
    def run(params, state):
        carry = (params, state, optimizer.init(params), jnp.zeros((size,), jnp.int32))
        (*_, counts), losses = jax.lax.scan(step, carry, jnp.arange(steps))
        return losses, counts

    losses, counts = run(params, state)
    return np.asarray(losses), np.asarray(counts)


def _fsq_config():
    return quantizers.config("fsq", levels=(5, 5, 5))


def _vq_config(**overrides):
    return quantizers.config("vq", **{"codebook_size": 64, "dim": 8, **overrides})


def _assert_learns(losses: np.ndarray, factor: float):
    start, end = losses[:10].mean(), losses[-10:].mean()
    assert np.all(np.isfinite(losses))
    assert end < factor * start, f"loss {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize(
    "config, factor, min_usage",
    [(_fsq_config(), 0.3, 0.8), (_vq_config(), 0.4, 0.25)],
    ids=["fsq", "vq"],
)
def test_tiny_autoencoder_loss_falls(config, factor, min_usage):
    losses, counts = _train(config, steps=120)
    _assert_learns(losses, factor)
    assert codebook.usage(counts) >= min_usage, codebook.summary(counts)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, factor, min_usage",
    [
        (_fsq_config(), 0.15, 0.9),
        (_vq_config(), 0.2, 0.45),
        (_vq_config(use_ema=True, reseed_dead_codes=True, dead_code_threshold=0.5), 0.15, 0.9),
        (_vq_config(entropy_weight=0.1, kmeans_init=True), 0.15, 0.9),
        (quantizers.config("residual_fsq"), 0.05, 0.5),
        (quantizers.config("lfq", dim=6), 0.15, 0.5),
    ],
    ids=["fsq", "vq", "vq_ema_reseed", "vq_entropy_kmeans", "residual_fsq", "lfq"],
)
def test_autoencoder_trains_for_hundreds_of_steps(config, factor, min_usage):
    losses, counts = _train(config, steps=500)
    _assert_learns(losses, factor)
    assert codebook.usage(counts) >= min_usage, codebook.summary(counts)
