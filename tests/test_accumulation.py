"""Gradient accumulation (fsq_jax.train.accumulation): micro-batches in turn give the whole
batch's mean loss and gradients for a model without batch statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsq_jax.train import accumulation


def _mlp_loss(params, batch):
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    return jnp.mean(jnp.square(hidden @ params["w2"] - batch["y"]))


def _problem(examples=12):
    keys = jax.random.split(jax.random.key(0), 5)
    params = {"w1": jax.random.normal(keys[0], (5, 7)), "b1": jax.random.normal(keys[1], (7,)),
              "w2": jax.random.normal(keys[2], (7, 3))}
    batch = {"x": jax.random.normal(keys[3], (examples, 5)),
             "y": jax.random.normal(keys[4], (examples, 3))}
    return params, batch


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_accumulated_gradients_equal_the_whole_batch_gradients(steps):
    params, batch = _problem()
    loss, grads = jax.value_and_grad(_mlp_loss)(params, batch)

    def micro_step(count, micro_batch, index):
        del index
        return count + 1, jax.value_and_grad(_mlp_loss)(params, micro_batch)

    count, (acc_loss, acc_grads) = jax.jit(
        lambda b: accumulation.accumulate(micro_step, 0, b, steps))(batch)
    assert int(count) == steps  # the carry went through every micro-batch
    np.testing.assert_allclose(acc_loss, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 acc_grads, grads)


def test_micro_batches_take_every_steps_th_row():
    """Rows j, j + steps, ...: on a device-major sharded batch every device holds an equal share
    of each micro-batch."""
    batch = {"x": jnp.arange(12).reshape(6, 2), "n": jnp.arange(6)}
    micro = accumulation.split_micro_batches(batch, 3)
    np.testing.assert_array_equal(micro["n"], [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(micro["x"][1], [[2, 3], [8, 9]])


def test_a_batch_that_does_not_split_is_refused_by_name():
    with pytest.raises(ValueError, match=r"batch \['x'\]: 5 examples do not split into 2"):
        accumulation.split_micro_batches({"x": jnp.zeros((5, 2))}, 2)
