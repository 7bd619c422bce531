"""UViM depth and colorization outputs on hand-made examples, and the config presets' checks."""

import importlib

import jax
import ml_collections
import numpy as np
import pytest

from fsq_jax import config_lib, train
from fsq_jax import images as image_lib
from uvim import stage1
from uvim.outputs import build_output, colorization, depth


def _depth_config(**overrides):
    return ml_collections.ConfigDict(
        {"name": "depth", "bins": 4, "min_depth": 0.0, "max_depth": 4.0, **overrides})


def _depth_task(**overrides):
    return depth.DepthOutput(_depth_config(**overrides))


def test_depth_bins_round_trip_to_bin_centres():
    values = np.array([0.0, 0.2, 1.0, 2.5, 3.99, 7.0], np.float32)
    bins = np.asarray(depth.depth_to_bins(values, 4, 0.0, 4.0))
    np.testing.assert_array_equal(bins, [0, 0, 1, 2, 3, 3])
    np.testing.assert_allclose(depth.bins_to_depth(bins, 4, 0.0, 4.0),
                               [0.5, 0.5, 1.5, 2.5, 3.5, 3.5])


def test_depth_loss_masks_bin_zero_and_averages_over_all_pixels():
    # big_vision depth_task.py: the cross-entropy of every pixel, zero where the target is bin 0
    # (missing depth 0.0 lands there, and so do valid depths under one bin width), then the mean
    # over all pixels; depths beyond max_depth train the last bin.
    task = _depth_task()
    batch = {"depth": np.array([[[0.5, 2.5, 7.0], [3.5, 0.0, 1.5]]], np.float32)}
    targets = task.targets(batch)["depth"]
    assert targets.shape == (1, 2, 3, 4)
    np.testing.assert_array_equal(np.argmax(targets, -1), [[[0, 2, 3], [3, 0, 1]]])
    right = 30.0 * targets
    wrong = np.asarray(right).copy()
    wrong[0, 1, 1] = wrong[0, 0, 0] = 30.0 * np.eye(4)[2]  # garbage on the bin-0 pixels only
    assert float(task.loss({"depth": right}, batch)[0]) < 1e-6
    assert float(task.loss({"depth": wrong}, batch)[0]) < 1e-6
    uniform = {"depth": np.zeros((1, 2, 3, 4), np.float32)}
    assert float(task.loss(uniform, batch)[0]) == pytest.approx(4 / 6 * np.log(4), rel=1e-6)
    np.testing.assert_allclose(task.predict({"depth": right})["depth"][0],
                               [[0.5, 2.5, 3.5], [3.5, 0.5, 1.5]])


def test_depth_metric_is_per_image_rmse():
    task = _depth_task(min_depth=1e-3)
    metric = task.new_metric()
    truth = np.array([[[1.0, 2.0], [3.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]], np.float32)
    prediction = np.full((2, 2, 2), 2.0, np.float32)
    metric.update({"depth": prediction}, {"depth": truth})
    result = metric.result()
    # Image 1: errors (1, 0, 1) over its 3 valid pixels; image 2: exact. Mean of per-image RMSE.
    assert result["rmse"] == pytest.approx(np.sqrt(2 / 3) / 2)
    assert result["delta1"] == pytest.approx((1 / 3 + 1) / 2)  # ratios 2, 1, 1.5 in image 1


def test_depth_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"config.output.bins = 0: must be > 0"):
        config_lib.check(_depth_config(bins=0), depth.DepthConfig, "config.output")
    with pytest.raises(ValueError, match=r"config.output.min_depth = 5.0: must be in"):
        config_lib.check(_depth_config(min_depth=5.0), depth.DepthConfig, "config.output")


def test_colorization_context_loss_and_psnr():
    task = colorization.ColorizationOutput(
        ml_collections.ConfigDict({"name": "colorization", "fid": False}))
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[..., 0] = 255
    gray = np.full((1, 2, 2, 1), 76, np.uint8)
    batch = {"image": image, "gray": gray}
    context = np.asarray(task.context(batch))
    assert context.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(context, 76 / 127.5 - 1)
    target = np.asarray(task.targets(batch)["color"])
    np.testing.assert_allclose(target[..., 0], 1.0)
    np.testing.assert_allclose(target[..., 1:], -1.0)
    assert float(task.loss({"color": target}, batch)[0]) == 0.0
    assert float(task.loss({"color": target + 0.5}, batch)[0]) == pytest.approx(0.25)
    prediction = task.predict({"color": target + 0.5})  # clipped to [-1, 1]
    np.testing.assert_allclose(np.asarray(prediction["image"])[..., 0], 1.0)
    predicted = np.asarray(image_lib.to_uint8(prediction["image"]))
    np.testing.assert_array_equal(predicted[..., 1:], 64)  # -0.5 -> 64: off by 64 in two channels
    expected = 10 * np.log10(255**2 / (2 * 64**2 / 3))
    assert colorization.psnr(predicted, image)[0] == pytest.approx(expected)
    metric = colorization.ColorizationMetric(fid=False)
    metric.update({"image": target}, batch)
    assert metric.result()["psnr"] == pytest.approx(100.0)  # identical images, capped


@pytest.mark.parametrize("task", ["depth", "colorization", "panoptic"])
def test_presets(task):
    module = importlib.import_module(f"configs.uvim.{task}")
    tiny = module.get_config("fsq,tiny")
    assert tiny.task == "uvim.tasks:Stage1Task" and tiny.output.name == task
    assert tiny.data.image_size == tiny.model.input_size == tiny.stage2.input_size == 32
    assert module.get_config("vq,tiny,stage2").task == "uvim.tasks:Stage2Task"
    vq = module.get_config("vq,paper")
    assert vq.quantizer.vq.use_ema and vq.quantizer.vq.split_codes and vq.quantizer.vq.beta == 0
    assert vq.quantizer.vq.standardize and vq.quantizer.vq.l2_normalize  # UViM's VQ lookup
    assert vq.data.crop == "inception" and vq.data.random_flip
    # big_vision trains panoptic and colorization on train[4096:], depth on all of train.
    assert vq.data.train_skip == (0 if task == "depth" else 4096)
    assert module.get_config("vq,tiny").data.train_skip == 0
    assert not module.get_config("vq,paper,nosplit").quantizer.vq.split_codes
    assert not module.get_config("fsq,tiny,nocontext").model.with_context
    paper = module.get_config("fsq,paper")
    assert paper.optimizer.name == "big_vision_adafactor" and paper.optimizer.warmup_steps == 4000
    assert paper.optimizer.beta2_cap == 0.95
    assert paper.optimizer.weight_decay_pattern == ".*/kernel$"
    assert paper.data.source.startswith("tfds:")
    build_output(paper.output)  # the paper output settings are valid
    train.validate(paper)


def test_preset_errors():
    module = importlib.import_module("configs.uvim.depth")
    with pytest.raises(ValueError, match="unknown preset 'bogus'"):
        module.get_config("fsq,tiny,bogus")
    with pytest.raises(ValueError, match="size given twice"):
        module.get_config("tiny,paper")
    with pytest.raises(ValueError, match="'nosplit' is a VQ ablation"):
        module.get_config("fsq,nosplit")
    with pytest.raises(ValueError, match=r"output\.name"):
        build_output(ml_collections.ConfigDict({"name": "segmentation"}))
    config = module.get_config("fsq,tiny")
    config.output.name = "segmentation"
    with pytest.raises(ValueError, match=r"config.output.name = 'segmentation': must be one of"):
        train.validate(config)


@pytest.mark.parametrize("field, value", [("code_len", 15), ("patch_size", 5),
                                          ("num_heads", 5), ("code_dropout", "all")])
def test_stage1_config_errors_name_the_field(field, value):
    config = importlib.import_module("configs.uvim.depth").get_config("fsq,tiny").model
    config[field] = value
    with pytest.raises(ValueError, match=f"config.model.{field} = "):
        config_lib.check(config, stage1.Stage1Config, "config.model")


def test_code_dropout_zeroes_whole_tokens():
    config = importlib.import_module("configs.uvim.depth").get_config("fsq,tiny")
    model = stage1.build(config.model, config.quantizer, {"depth": 4})
    codes = np.ones((64, 16, 4), np.float32)
    variables = jax.eval_shape(lambda: stage1.init_variables(model, jax.random.key(0)))
    del variables
    dropped = model.apply({}, codes, method=lambda m, c: m._drop_codes(c),
                          rngs={"dropout": jax.random.key(1)})
    dropped = np.asarray(dropped)
    kept = dropped[..., 0]
    assert set(np.unique(dropped)) <= {0.0, 1.0}
    np.testing.assert_array_equal(dropped, np.broadcast_to(kept[..., None], dropped.shape))
    fraction = kept.mean(axis=1)
    assert fraction.min() < 0.5 < fraction.max()  # a random amount per example
