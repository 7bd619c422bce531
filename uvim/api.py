"""A trained UViM model in your own code: images in, dense predictions out (depth in metres,
panoptic segments, colours).

    from uvim.api import DepthPredictor

    predictor = DepthPredictor.from_workdir("runs/uvim/depth_fsq/stage2")
    images = predictor.load_images(["room.jpg"])  # uint8 [1, S, S, 3], S = its input size
    depth = predictor.predict(images)             # float32 [1, S, S], metres

`Predictor` serves every UViM output (`predict` returns the output's dict). Both read the stage-II
run's newest good checkpoint, which carries its frozen stage I, without changing the workdir;
stage I's architecture comes from the config.json of the run its `stage1_workdir` names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from fsq_jax import images as image_lib
from fsq_jax.data.scenes import luminance
from fsq_jax.train import checkpoint as checkpoint_lib
from fsq_jax.train.frozen import frozen_from_variables, read_frozen_config
from uvim.tasks import Stage2Task

STAGE2_TASK = "uvim.tasks:Stage2Task"


class Predictor:
    """UViM inference of a stage-II run: image -> stage-II code -> frozen stage-I decoder.

    Args:
      task: the run's `Stage2Task`.
      params: stage-II parameters; stage1_variables: the frozen stage I's variables.
      batch_size: images per jitted call; seed: the decoding rng (used when the config's
        `stage2.temperature` > 0, else decoding is greedy).
    """

    def __init__(self, task: Stage2Task, params: Any, stage1_variables: Any,
                 batch_size: int = 32, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.task = task
        self.params = jax.device_put(params)
        self.stage1_variables = jax.device_put(stage1_variables)
        self.batch_size = batch_size
        self.seed = seed

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike, batch_size: int = 32, seed: int = 0
                     ) -> Predictor:
        """The model of the stage-II run in `workdir` (`configs/uvim/*.py:...,stage2`).

        Raises:
          FileNotFoundError: no config.json or no checkpoint in `workdir`.
          ValueError: not a UViM stage-II run, or its stage-I run's config.json is missing.
        """
        workdir = os.fspath(workdir)
        config, restored = checkpoint_lib.restore_latest(workdir)
        if config.get("task") != STAGE2_TASK:
            raise ValueError(f"{workdir!r} is not a UViM stage-II run (its task is "
                             f"{config.get('task')!r}, not {STAGE2_TASK!r})")
        stage1_config = read_frozen_config(config.stage1_workdir,
                                           f"{workdir}/config.json: stage1_workdir")
        stage1_variables = restored["model_state"]["stage1"]
        task = Stage2Task(config, frozen_from_variables(stage1_config, "model",
                                                        stage1_variables))
        params = (restored["ema_params"] or restored["params"])["stage2"]
        return cls(task, params, stage1_variables, batch_size, seed)

    @property
    def config(self) -> ml_collections.ConfigDict:
        """The stage-II run's config."""
        return self.task.config

    @property
    def output(self) -> str:
        """What it predicts: "depth", "panoptic" or "colorization"."""
        return str(self.task.output.name)

    @property
    def image_size(self) -> int:
        """The input resolution the model takes (its ViT's patch grid is fixed)."""
        return int(self.config.data.image_size)

    def load_images(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Image files -> uint8 [N, S, S, 3], centre-cropped and resized to `image_size`."""
        return image_lib.load_images(paths, self.image_size)

    @functools.cached_property
    def _predict(self) -> Callable[..., tuple[dict[str, jax.Array], jax.Array]]:
        return jax.jit(self.task.predict_fn)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 images [N, S, S, 3] (S = `image_size`) -> the output's predictions as numpy:
        depth `{"depth": float32 [N, S, S]}` in metres; panoptic `{"semantic", "instance"}`
        int32 [N, S, S]; colorization `{"image": float32 [N, S, S, 3]}` in [-1, 1] (the colour
        of the images' luminance: pass colour or gray-as-RGB images)."""
        images = np.asarray(images)
        size = self.image_size
        if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"predict: expected uint8 images [N, {size}, {size}, 3] (the "
                             f"model's input size; see load_images), got {images.dtype} "
                             f"{list(images.shape)}")
        rng = jax.random.key(self.seed)
        outputs: list[dict[str, np.ndarray]] = []
        for index, start in enumerate(range(0, len(images), self.batch_size)):
            chunk = images[start:start + self.batch_size]
            batch = {"image": chunk, "gray": luminance(chunk)}
            prediction, _ = self._predict(self.params, self.stage1_variables, batch,
                                          jax.random.fold_in(rng, index))
            outputs.append({k: np.asarray(v) for k, v in prediction.items()})
        if not outputs:
            raise ValueError("predict: no images")
        return {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}


class DepthPredictor:
    """Monocular depth from a UViM depth run: `predict(images)` -> metres.

    Args:
      predictor: a `Predictor` of a depth run.
    """

    def __init__(self, predictor: Predictor):
        if predictor.output != "depth":
            raise ValueError(f"DepthPredictor needs a depth run, this one predicts "
                             f"{predictor.output!r} (use uvim.api.Predictor)")
        self.predictor = predictor

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike, batch_size: int = 32) -> DepthPredictor:
        """The depth model of the stage-II run in `workdir` (`configs/uvim/depth.py:...,stage2`)."""
        return cls(Predictor.from_workdir(workdir, batch_size))

    @property
    def image_size(self) -> int:
        """The input resolution the model takes."""
        return self.predictor.image_size

    def load_images(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Image files -> uint8 [N, S, S, 3], centre-cropped and resized to `image_size`."""
        return self.predictor.load_images(paths)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, S, S, 3] -> float32 depth [N, S, S] in metres."""
        return self.predictor.predict(images)["depth"].astype(np.float32)
