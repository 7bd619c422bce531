"""Colorization as a UViM task: grayscale image in, RGB out; L2 loss, FID (and PSNR) to evaluate.

As in UViM the context is the grayscale image (replicated to 3 channels) and the target the colour
image in [-1, 1]; the decoder regresses the three channels per pixel. UViM's metric is ColTran's
FID-5k (`uvim.coltran_fid`, its own evaluator); the streaming metric here is PSNR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from fsq_jax import images as image_lib
from uvim.outputs.base import Batch, DenseOutput, Metric

NAME = "colorization"


FidProtocol = Literal["none", "coltran", "ground_truth"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ColorizationConfig:
    """`output.*` of colorization. `fid` (needs the InceptionV3 weights: `make inception`):
    "coltran" = UViM's FID-5k (ColTran's file lists of tfds:imagenet2012 validation, scored at
    256; `uvim.coltran_fid`), "ground_truth" = FID of the evaluated predictions against their
    own colour images (any source; not a paper number), "none" = PSNR only."""

    name: Literal["colorization"]
    fid: FidProtocol


def psnr(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images [B, H, W, 3] (inf for identical images)."""
    diff = prediction.astype(np.float64) - target.astype(np.float64)
    mse = np.mean(diff**2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


class ColorizationMetric(Metric):
    """PSNR over images and, when `fid`, FID of predicted against their own true colour images
    (the "ground_truth" protocol; UViM's FID-5k is `uvim.coltran_fid`)."""

    def __init__(self, fid: bool):
        self.fid = fid
        self.psnr: list[np.ndarray] = []
        self.predicted: list[np.ndarray] = []
        self.real: list[np.ndarray] = []

    def update(self, prediction: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]
               ) -> None:
        predicted = np.asarray(image_lib.to_uint8(prediction["image"]))
        real = np.asarray(batch["image"], np.uint8)
        self.psnr.append(psnr(predicted, real))
        if self.fid:
            self.predicted.append(predicted)
            self.real.append(real)

    def result(self) -> dict[str, float]:
        values = np.concatenate(self.psnr) if self.psnr else np.zeros((0,))
        values = np.minimum(values, 100.0)  # identical images: cap instead of inf
        out = {"psnr": float(values.mean()) if values.size else float("nan")}
        if self.fid and self.predicted:
            from fsq_jax.eval import fid, inception

            extractor = inception.FeatureExtractor()
            out["fid"] = float(fid.colorization_fid(self.predicted, self.real, extractor,
                                                    allow_singular=True))
        return out


class ColorizationOutput(DenseOutput):
    """Colorization: target = RGB in [-1, 1]; loss = mean squared error; context = gray image."""

    name = NAME

    def target_channels(self) -> dict[str, int]:
        return {"color": 3}

    def targets(self, batch: Batch) -> dict[str, jax.Array]:
        return {"color": image_lib.to_float(batch["image"])}

    def context(self, batch: Batch) -> jax.Array:
        gray = image_lib.to_float(batch["gray"])
        return jnp.broadcast_to(gray, (*gray.shape[:-1], 3))

    def loss(self, logits: Mapping[str, jax.Array], batch: Batch
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        target = image_lib.to_float(batch["image"])
        loss = jnp.mean(jnp.square(logits["color"].astype(jnp.float32) - target))
        return loss, {"loss_color": loss}

    def predict(self, logits: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return {"image": jnp.clip(logits["color"], -1.0, 1.0)}

    def ground_truth(self, batch: Batch) -> dict[str, jax.Array]:
        return {"image": image_lib.to_float(batch["image"])}

    def batch_metrics(self, prediction: Mapping[str, jax.Array], batch: Batch
                      ) -> dict[str, jax.Array]:
        target = image_lib.to_float(batch["image"])
        mse = jnp.mean(jnp.square((prediction["image"] - target) * 127.5))
        return {"psnr_batch": 10.0 * jnp.log10(255.0**2 / jnp.maximum(mse, 1e-10))}

    def visualize(self, output: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(image_lib.to_uint8(output["image"]))

    def new_metric(self) -> ColorizationMetric:
        return ColorizationMetric(self.config.fid == "ground_truth")
