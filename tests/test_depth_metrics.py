"""Depth metrics (UViM's NYU evaluator conventions) on hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fsq_jax.eval import depth


def _hand_worked_batch():
    gt = np.array([[[1.0, 2.0], [4.0, 0.0]],   # 0 = missing depth, not scored
                   [[1.0, 1.0], [1.0, 1.0]]], np.float32)
    pred = np.array([[[1.0, 1.0], [5.0, 3.0]],
                     [[2.0, 2.0], [2.0, 2.0]]], np.float32)
    return pred, gt


def test_hand_worked_per_image_then_mean():
    pred, gt = _hand_worked_batch()
    result = depth.DepthMetrics().update(pred, gt).result()
    # Image 1, valid pixels (gt, pred): (1, 1), (2, 1), (4, 5); ratios 1, 2, 1.25.
    image1 = {"rmse": math.sqrt(2 / 3), "abs_rel": (0 + 0.5 + 0.25) / 3,
              "log10": (math.log10(2) + math.log10(1.25)) / 3,
              "delta1": 1 / 3,   # 1.25 is not < 1.25
              "delta2": 2 / 3, "delta3": 2 / 3}  # 2 is not < 1.25 ** 3 = 1.953
    # Image 2: every prediction is twice the truth.
    image2 = {"rmse": 1.0, "abs_rel": 1.0, "log10": math.log10(2), "delta1": 0.0,
              "delta2": 0.0, "delta3": 0.0}
    for name in depth.METRIC_NAMES:
        assert result[name] == pytest.approx((image1[name] + image2[name]) / 2, abs=1e-7), name


def test_streaming_and_merge_equal_one_pass():
    pred, gt = _hand_worked_batch()
    one = depth.DepthMetrics().update(pred, gt).result()
    merged = depth.DepthMetrics().update(pred[:1], gt[:1]).merge(
        depth.DepthMetrics().update(pred[1:], gt[1:])).result()
    assert merged == pytest.approx(one)


def test_valid_range_and_mask():
    gt = np.array([[[1.0, 12.0, 5e-4, 2.0]]], np.float32)  # 12 m and 0.5 mm are invalid
    pred = np.array([[[2.0, 1.0, 1.0, 2.0]]], np.float32)
    metrics = depth.DepthMetrics(min_depth=1e-3, max_depth=10.0).update(pred, gt)
    assert metrics.result()["rmse"] == pytest.approx(math.sqrt(1 / 2))
    masked = depth.DepthMetrics().update(pred, gt, mask=np.array([[[False, True, True, True]]]))
    assert masked.result()["rmse"] == 0.0


def test_eigen_crop_ignores_the_border():
    gt = np.full((1, 480, 640), 3.0, np.float32)
    pred = gt.copy()
    pred[:, :45] = 6.0   # rows above the crop
    pred[:, :, 601:] = 6.0  # columns right of the crop
    assert depth.DepthMetrics(crop="eigen").update(pred, gt).result()["rmse"] == 0.0
    assert depth.DepthMetrics().update(pred, gt).result()["rmse"] > 0.0
    with pytest.raises(ValueError, match="480x640"):
        depth.DepthMetrics(crop="eigen").update(pred[:, :100], gt[:, :100])


def test_prediction_is_resized_nearest_to_ground_truth():
    gt = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]], np.float32)
    pred = np.array([[[1, 2], [3, 4]]], np.float32)[..., None]  # [B, h, w, 1] is accepted
    assert depth.DepthMetrics().update(pred, gt).result()["rmse"] == 0.0


def test_empty_images_are_skipped_and_bad_inputs_rejected():
    metrics = depth.DepthMetrics().update(np.ones((1, 2, 2), np.float32),
                                          np.zeros((1, 2, 2), np.float32))
    assert metrics.num_skipped == 1
    with pytest.raises(ValueError, match="no image"):
        metrics.result()
    with pytest.raises(ValueError, match="same B"):
        depth.DepthMetrics().update(np.ones((2, 2, 2), np.float32), np.ones((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        depth.DepthMetrics().update(np.ones((1, 2, 2), np.int32), np.ones((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="positive"):
        depth.DepthMetrics().update(np.zeros((1, 2, 2), np.float32),
                                    np.ones((1, 2, 2), np.float32))
    clipped = depth.DepthMetrics(clip_prediction=True).update(
        np.zeros((1, 1, 1), np.float32), np.full((1, 1, 1), 1.0, np.float32))
    assert clipped.result()["rmse"] == pytest.approx(1.0 - 1e-3)
    with pytest.raises(ValueError, match="min_depth"):
        depth.DepthMetrics(min_depth=5.0, max_depth=1.0)
