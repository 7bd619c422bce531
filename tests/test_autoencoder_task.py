"""The small quantized autoencoder task: shapes, learning, FSQ/VQ as a config swap."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import autoencoder as autoencoder_config
from fsq_jax import train
from fsq_jax.tasks.autoencoder import GROUP, AutoencoderTask
from fsq_jax.tasks.synthetic import smooth_images


def setup(arg, learning_rate=3e-3):
    config = autoencoder_config.get_config(arg)
    config.optimizer.learning_rate = learning_rate
    task = AutoencoderTask(config)
    batch = next(smooth_images(config.data, "train", 8))
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), batch)
    return config, task, batch, state


def parameter_count(state):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize("arg, expected_params", [("fsq,tiny", 21_287), ("vq,tiny", 29_739)])
def test_tiny_presets_have_pinned_parameter_counts(arg, expected_params):
    config = autoencoder_config.get_config(arg)
    task = AutoencoderTask(config)
    batch = next(smooth_images(config.data, "train", 8))
    state = jax.eval_shape(task.init_state, jax.random.PRNGKey(0), batch)  # nothing compiled
    assert isinstance(state, train.TrainState) and set(state.params) == {GROUP}
    assert config.quantizer.name == arg.split(",")[0]
    # Pinned so an architecture change cannot slip through unnoticed (fsq: 224 + 2064 + 8224
    # + 132 + 160 + 8208 + 2056 + 219 conv/dense weights; vq: dim 8 and a 1024 x 8 codebook).
    assert parameter_count(state) == expected_params


# The loop's tests train this task end to end; these check the task alone, learning included.
@pytest.mark.slow
@pytest.mark.parametrize("arg, steps", [("fsq,tiny", 12), ("vq,tiny", 60)])
def test_tiny_presets_learn_and_report(arg, steps):
    config, task, batch, state = setup(arg)
    step = jax.jit(task.train_step)
    losses = []
    for index in range(steps):
        state, metrics = step(state, batch, jax.random.PRNGKey(index))
        losses.append(float(metrics["mse"]))
    assert int(state.step) == steps
    assert losses[-1] < 0.85 * losses[0], losses
    if config.quantizer.name == "vq":
        assert float(metrics["quantizer_loss"]) > 0.0  # VQ's codebook + commitment loss
    else:
        assert float(metrics["quantizer_loss"]) == 0.0
    assert {"loss", "mse", "quantizer_loss"} <= set(metrics)
    assert float(state.grad_norms[GROUP]) > 0  # the loop logs it as grad_norm/autoencoder
    evaluation = jax.jit(task.eval_step)(state, batch, jax.random.PRNGKey(0))
    assert float(evaluation["psnr"]) > 0 and np.isfinite(float(evaluation["mse"]))
    grid = task.images(state, batch, jax.random.PRNGKey(0))["reconstructions"]
    size = config.data.image_size
    assert grid.dtype == np.uint8 and grid.shape == (2 * size, 8 * size, 3)
    np.testing.assert_array_equal(grid[:size, :size], np.asarray(batch["image"][0]))


def test_image_size_must_match_downsampling():
    config = autoencoder_config.get_config("fsq,tiny")
    config.data.image_size = 18
    with pytest.raises(train.ConfigError,
                       match=r"config.data.image_size = 18: must be divisible by 4"):
        train.validate(config)
