"""Monocular depth metrics as UViM's NYU Depth v2 evaluator computes them (RMSE is the headline).

Per image, over valid pixels only (`min_depth < gt < max_depth`, default 1e-3 m and 10 m, inside
the optional evaluation crop), compute RMSE, AbsRel `mean(|gt - pred| / gt)`, log10
`mean(|log10 gt - log10 pred|)` and the threshold accuracies delta_k = fraction with
`max(gt / pred, pred / gt) < 1.25 ** k`, k = 1, 2, 3; then average each over images. A
prediction of another size is resized to the ground truth with nearest-neighbour sampling.

NYU crop convention: the standard ("Eigen") evaluation crop of the 480x640 NYU frames keeps rows
45..470 and columns 41..600 (a 426x560 window, `EIGEN_CROP`), discarding the white border of the
projected Kinect depth. UViM (big_vision pp/proj/uvim/pp_ops.py `nyu_eval_crop`) crops image and
ground truth in preprocessing to a 426x560 window whose code starts at row 54 (`UVIM_CROP`, rows
54..479; its comment names the Eigen rows): the UViM protocol crops in the data pipeline
(`data.eval_crop = "nyu_eval_crop"`, `data.eval_native_shape`) and scores with `update_native`.
For full 480x640 maps pass ``crop="eigen"`` or ``crop="uvim"``; ``crop=None`` when the maps are
already cropped or are not NYU frames.
"""

from __future__ import annotations

import numpy as np

EIGEN_CROP = (slice(45, 471), slice(41, 601))  # rows, columns of a 480x640 NYU frame
UVIM_CROP = (slice(54, 480), slice(41, 601))  # big_vision's nyu_eval_crop, as its code runs
CROPS = {"eigen": EIGEN_CROP, "uvim": UVIM_CROP}
NYU_SHAPE = (480, 640)
METRIC_NAMES = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")


def resize_nearest(depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of `[H, W, ...]` (pixel centres aligned, as jax.image.resize:
    output pixel i takes input pixel floor((i + 0.5) * H / h))."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * depth.shape[0] / shape[0]).astype(int),
                      depth.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * depth.shape[1] / shape[1]).astype(int),
                      depth.shape[1] - 1)
    return depth[rows[:, None], cols[None, :]]


def image_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Metrics of one image over its valid pixels; pred, gt, valid: `[H, W]`."""
    p, g = pred[valid].astype(np.float64), gt[valid].astype(np.float64)
    ratio = np.maximum(g / p, p / g)
    return {
        "rmse": float(np.sqrt(np.mean((g - p) ** 2))),
        "abs_rel": float(np.mean(np.abs(g - p) / g)),
        "log10": float(np.mean(np.abs(np.log10(g) - np.log10(p)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


class DepthMetrics:
    """Accumulates per-image depth metrics over batches; `result()` averages over images.

    Args:
      min_depth, max_depth: ground truth outside (min_depth, max_depth) is invalid (metres).
      crop: "eigen" or "uvim" for that evaluation crop of 480x640 NYU maps, or None.
      clip_prediction: clip predictions to [min_depth, max_depth] before scoring. UViM does not;
        without it a non-positive prediction on a valid pixel is an error (log10 undefined).
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0,
                 crop: str | None = None, clip_prediction: bool = False):
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}.")
        if crop is not None and crop not in CROPS:
            raise ValueError(f"crop must be None, 'eigen' or 'uvim', got {crop!r}.")
        self.min_depth, self.max_depth = min_depth, max_depth
        self.crop, self.clip_prediction = crop, clip_prediction
        self.sums = dict.fromkeys(METRIC_NAMES, 0.0)
        self.num_images = 0
        self.num_skipped = 0  # images without any valid pixel

    def update(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None
               ) -> DepthMetrics:
        """Add a batch: pred `[B, h, w]` (or `[B, h, w, 1]`), gt `[B, H, W]` in metres (0 where
        invalid), optional boolean mask `[B, H, W]` of pixels to score. Returns self."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.ndim == 4 and pred.shape[-1] == 1:
            pred = pred[..., 0]
        if gt.ndim == 4 and gt.shape[-1] == 1:
            gt = gt[..., 0]
        if pred.ndim != 3 or gt.ndim != 3 or len(pred) != len(gt):
            raise ValueError(f"pred and gt must be [B, H, W] with the same B, got {pred.shape} "
                             f"and {gt.shape}.")
        if mask is not None and np.shape(mask) != gt.shape:
            raise ValueError(f"mask shape {np.shape(mask)} != gt shape {gt.shape}.")
        if not (np.issubdtype(pred.dtype, np.floating) and np.issubdtype(gt.dtype, np.floating)):
            raise ValueError(f"depths must be floating point, got {pred.dtype}, {gt.dtype}.")
        if self.crop is not None and gt.shape[1:] != NYU_SHAPE:
            raise ValueError(f"the {self.crop!r} crop applies to 480x640 NYU maps, got "
                             f"{gt.shape[1:]}.")
        for i in range(len(gt)):
            p = pred[i] if pred.shape[1:] == gt.shape[1:] else resize_nearest(pred[i],
                                                                               gt.shape[1:])
            valid = (gt[i] > self.min_depth) & (gt[i] < self.max_depth)
            if mask is not None:
                valid &= np.asarray(mask[i], bool)
            if self.crop is not None:
                crop = np.zeros(NYU_SHAPE, bool)
                crop[CROPS[self.crop]] = True
                valid &= crop
            if not valid.any():
                self.num_skipped += 1
                continue
            if self.clip_prediction:
                p = np.clip(p, self.min_depth, self.max_depth)
            elif not np.all(np.isfinite(p[valid])) or np.any(p[valid] <= 0):
                raise ValueError("predictions must be finite and positive on valid pixels "
                                 "(or use clip_prediction=True).")
            for name, value in image_metrics(p, gt[i], valid).items():
                self.sums[name] += value
            self.num_images += 1
        return self

    def update_native(self, pred: np.ndarray, gt: np.ndarray, shapes: np.ndarray
                      ) -> DepthMetrics:
        """Add a batch scored at native resolution, as big_vision's UViM NYU evaluator.

        pred `[B, h, w]` at the model's resolution; gt `[B, H, W]` padded native ground truth
        whose image i fills `gt[i, :shapes[i, 0], :shapes[i, 1]]` (shapes int `[B, 2]`). Each
        prediction is resized (nearest) to its image's native shape. Returns self.
        """
        pred, gt, shapes = np.asarray(pred), np.asarray(gt), np.asarray(shapes)
        if pred.ndim == 4 and pred.shape[-1] == 1:
            pred = pred[..., 0]
        if pred.ndim != 3 or gt.ndim != 3 or shapes.shape != (len(gt), 2) or len(pred) != len(gt):
            raise ValueError(f"update_native needs pred [B, h, w], gt [B, H, W] and shapes "
                             f"[B, 2], got {pred.shape}, {gt.shape} and {shapes.shape}.")
        for i in range(len(gt)):
            height, width = (int(v) for v in shapes[i])
            if not (0 < height <= gt.shape[1] and 0 < width <= gt.shape[2]):
                raise ValueError(f"native shape {(height, width)} of image {i} does not fit "
                                 f"its padded ground truth {gt.shape[1:]}.")
            truth = gt[i, :height, :width][None]
            self.update(resize_nearest(pred[i], (height, width))[None], truth)
        return self

    def merge(self, other: DepthMetrics) -> DepthMetrics:
        for name in METRIC_NAMES:
            self.sums[name] += other.sums[name]
        self.num_images += other.num_images
        self.num_skipped += other.num_skipped
        return self

    def result(self) -> dict[str, float]:
        """Mean over images of each metric in `METRIC_NAMES`."""
        if self.num_images == 0:
            raise ValueError("no image with valid depth pixels was accumulated.")
        return {name: self.sums[name] / self.num_images for name in METRIC_NAMES}
