"""TrainState (parameter groups, EMA) and the optimiser builder."""

from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fsq_jax import config_lib
from fsq_jax.train import TrainState, optim


def groups():
    return {"generator": {"w": jnp.ones((3,))}, "discriminator": {"w": jnp.full((2,), 2.0)}}


def test_apply_gradients_updates_only_the_given_group_and_its_ema():
    state = TrainState.create(
        groups(), {"generator": optax.sgd(0.5), "discriminator": optax.sgd(0.5)}, ema_decay=0.9
    )
    assert int(state.step) == 0 and set(state.ema_params) == {"generator", "discriminator"}
    new = state.apply_gradients(
        {"generator": {"w": jnp.ones((3,))}},
        model_state={"quantizer_state": {"count": jnp.ones(())}},
    )
    assert int(new.step) == 1
    np.testing.assert_allclose(new.params["generator"]["w"], 0.5)
    np.testing.assert_allclose(new.params["discriminator"]["w"], 2.0)
    np.testing.assert_allclose(new.ema_params["generator"]["w"], 0.9 * 1.0 + 0.1 * 0.5)
    np.testing.assert_allclose(new.ema_params["discriminator"]["w"], 2.0)
    assert float(new.model_state["quantizer_state"]["count"]) == 1.0
    assert new.eval_params() is new.ema_params


def test_state_is_a_jittable_pytree_with_static_optimisers():
    tx = {"generator": optax.adam(1e-2), "discriminator": optax.adam(1e-2)}
    state = TrainState.create(groups(), tx)
    assert state.ema_params == {} and state.eval_params() is state.params

    @jax.jit
    def step(state):
        grads = jax.tree.map(jnp.ones_like, state.params)
        return state.apply_gradients(grads)

    new = step(state)
    assert int(new.step) == 1 and new.tx == state.tx and hash(new.tx) == hash(state.tx)
    assert float(new.params["generator"]["w"][0]) < 1.0


def test_create_rejects_mismatched_groups_and_bad_decay():
    with pytest.raises(ValueError, match=r"missing optimisers: \['discriminator'\]"):
        TrainState.create(groups(), {"generator": optax.sgd(1.0)})
    with pytest.raises(ValueError, match="single parameter group"):
        TrainState.create(groups(), optax.sgd(1.0))
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        TrainState.create({"g": {"w": jnp.ones(1)}}, optax.sgd(1.0), ema_decay=1.0)
    state = TrainState.create({"g": {"w": jnp.ones(1)}}, optax.sgd(1.0))
    with pytest.raises(KeyError, match="not in parameter groups"):
        state.apply_gradients({"d": {"w": jnp.ones(1)}})


def config(**fields):
    return config_lib.optimizer(**fields)


def learning_rates(tx, steps):
    params = {"w": jnp.zeros(())}
    opt_state = tx.init(params)
    rates = []
    for _ in range(steps):
        updates, opt_state = tx.update({"w": jnp.ones(())}, opt_state, params)
        rates.append(-float(updates["w"]))
    return rates


def test_schedules_warmup_and_decay():
    sgd = dict(name="sgd", momentum=0.0, learning_rate=1.0)
    rates = learning_rates(optim.build(config(schedule="cosine", warmup_steps=2, **sgd), 6), 6)
    np.testing.assert_allclose(rates[:3], [0.0, 0.5, 1.0], atol=1e-6)
    assert rates[3] > rates[4] > rates[5] > 0.0
    linear = learning_rates(optim.build(config(schedule="linear", **sgd), 4), 4)
    np.testing.assert_allclose(linear, [1.0, 0.75, 0.5, 0.25], atol=1e-6)
    assert learning_rates(optim.build(config(**sgd), 3), 3) == [1.0, 1.0, 1.0]


def test_gradient_clipping_bounds_the_update():
    tx = optim.build(config(name="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=0.5), 1)
    params = {"w": jnp.zeros((4,))}
    updates, _ = tx.update({"w": jnp.full((4,), 10.0)}, tx.init(params), params)
    np.testing.assert_allclose(jnp.linalg.norm(updates["w"]), 0.5, rtol=1e-5)


@pytest.mark.parametrize("name", typing.get_args(config_lib.sections.OptimizerName))
def test_every_optimizer_builds_and_steps(name):
    tx = optim.build(config(name=name, weight_decay=0.0), 10)
    params = {"w": jnp.ones((4, 4))}
    updates, _ = tx.update({"w": jnp.ones((4, 4))}, tx.init(params), params)
    assert np.isfinite(np.asarray(updates["w"])).all()


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(name="rmsprop"), "optimizer.name = 'rmsprop': must be one of 'adam', 'adamw'"),
        (dict(schedule="exponential"), "optimizer.schedule = 'exponential'"),
        (dict(learning_rate=0.0), "optimizer.learning_rate = 0.0: must be > 0"),
        (dict(b2=1.0), "optimizer.b2 = 1.0: must be in [0, 1)"),
        (dict(weight_decay=0.1), "needs name='adamw'"),
        (dict(learning_rate_x=1.0), "optimizer.learning_rate_x: unknown field; did you mean"),
    ],
)
def test_bad_optimizer_fields_are_named(fields, message):
    section = ml_collections.ConfigDict({**config().to_dict(), **fields})
    with pytest.raises(ValueError) as info:
        config_lib.check(section, config_lib.OptimizerConfig, "optimizer")
    assert message in str(info.value)


def test_warmup_longer_than_the_run_is_a_tenth_of_it():
    rates = learning_rates(optim.build(config(name="sgd", momentum=0.0, schedule="cosine",
                                              warmup_steps=50, learning_rate=1.0), 10), 10)
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1.0)  # 1 warm-up step of 10
