"""The config sections `fsq_jax` itself reads: the loop's fields, `data` and an optimizer.

Each is a schema whose defaults are the single source of these fields' defaults: config files
start from `loop()`, `data()` and `optimizer()`, and the loop checks configs against the same
classes. Pure data: importing this module imports no JAX.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Literal

import ml_collections

from fsq_jax.schema import FieldError, defaults, require

NanPolicy = Literal["stop", "skip"]
CropMode = Literal["center", "random", "resize", "inception"]
# "" = as `crop` ("random" -> "center", "inception" -> "resize"); "nyu_eval_crop": big_vision's
# fixed NYU Depth v2 evaluation window (fsq_jax/data/preprocess.py).
EvalCropMode = Literal["", "center", "resize", "nyu_eval_crop"]
OnCorrupt = Literal["fail", "skip"]
# "adafactor" is optax's; "big_vision_adafactor" is UViM's (big_vision/optax.py), see
# fsq_jax/train/big_vision_optax.py.
OptimizerName = Literal["adam", "adamw", "sgd", "lion", "adafactor", "big_vision_adafactor"]
ScheduleName = Literal["constant", "cosine", "linear"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """`data.*`: where examples come from and how they are read (fsq_jax.data)."""

    # "scenes" (procedural, built in), "tfds:<name>" (tfds:imagenet2012, tfds:nyu_depth_v2,
    # tfds:coco/2017_panoptic) or "folder:<path>" (class subfolders of images).
    source: str = "scenes"
    image_size: int = 64
    seed: int = 0  # data order, augmentation and the procedural scenes themselves
    shuffle: bool = True  # shuffle the train split (evaluation splits keep their order)
    tfds_data_dir: str = ""  # "" = the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    on_corrupt: OnCorrupt = "fail"  # folder sources: fail on, or skip, unreadable images
    # Folder sources: an image with more pixels (width x height, read from its header before
    # decoding) is unreadable (see on_corrupt). 50 Mpx holds a 48-Mpx phone photo (~150 MB
    # decoded) and stays far below PIL's own bomb limit (89 Mpx warning, 179 Mpx refusal).
    max_pixels: int = 50_000_000
    # Folder sources without train/ and validation/ (or val/) subfolders: the fraction of the
    # images held out as the validation split (picked by a hash of each file's path, so stable
    # when images are added). 0 = such a folder has no validation split, and evaluation on it
    # is refused rather than silently run on the training images.
    folder_holdout: float = 0.0
    # Real images (tfds, folder): "center" square crop, "random" square crop of the train split
    # (centre for the others), "resize" the whole image to a square, or "inception": a random box
    # of 5-100% of the area and aspect 3/4-4/3 stretched to a square (big_vision's inception_box).
    crop: CropMode = "random"
    eval_crop: EvalCropMode = ""  # the other splits' crop; "" = as `crop` (see EvalCropMode)
    random_flip: bool = True  # horizontal flips of the train split (tfds, folder)
    # (height, width) > 0: evaluation examples (tfds, folder) also carry their dense maps over
    # the crop window at its native resolution, padded to this shape, as `native_<key>` with
    # `native_shape` [2]; () = off. UViM scores NYU (426, 560) and COCO (<= 640) there.
    eval_native_shape: tuple[int, ...] = ()
    # TFDS: the first `train_skip` examples of the train split are held out (big_vision's
    # UViM configs train on "train[4096:]"); scenes and folders must keep 0.
    train_skip: int = 0
    # Procedural scenes: objects per scene and nominal split sizes (an epoch's length).
    min_objects: int = 1
    max_objects: int = 4
    train_size: int = 100_000
    eval_size: int = 10_000
    # Prefetching: threads reading ahead, and how many batches they may hold.
    read_threads: int = 2
    prefetch_batches: int = 4

    def __post_init__(self):
        kind, _, argument = self.source.partition(":")
        require(self.source == "scenes" or kind in ("tfds", "folder"), "source",
                "must be 'scenes', 'tfds:<name>' or 'folder:<path>'")
        require(kind == "scenes" or bool(argument), "source", "the name or path after ':' is "
                "empty")
        require(kind != "folder" or os.path.isdir(argument), "source",
                f"no such directory {argument!r}")
        require(self.image_size >= 8, "image_size", "must be >= 8")
        require(0 <= self.seed < 2**32, "seed", "must be in [0, 2^32)")
        require(1 <= self.min_objects <= self.max_objects, "min_objects",
                f"need 1 <= min_objects <= max_objects ({self.max_objects})")
        for field in ("train_size", "eval_size"):
            require(getattr(self, field) >= 1, field, "must be >= 1")
        require(self.eval_native_shape == () or (len(self.eval_native_shape) == 2 and all(
            size >= 1 for size in self.eval_native_shape)), "eval_native_shape",
            "must be () or (height, width) with both >= 1")
        require(self.train_skip >= 0, "train_skip", "must be >= 0")
        require(self.train_skip == 0 or kind == "tfds", "train_skip",
                "holds out train examples of TFDS sources only; set it to 0")
        for field in ("read_threads", "prefetch_batches"):
            require(getattr(self, field) >= 0, field, "must be >= 0")
        require(self.max_pixels >= 1, "max_pixels", "must be >= 1")
        require(0.0 <= self.folder_holdout < 1.0, "folder_holdout",
                "must be in [0, 1) (0 = no held-out validation images)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """An optax optimiser with its learning-rate schedule (fsq_jax.train.optim.build)."""

    name: OptimizerName = "adam"
    learning_rate: float = 1e-4  # the peak rate, after warm-up
    schedule: ScheduleName = "constant"  # cosine / linear decay to end_learning_rate
    warmup_steps: int = 0  # linear warm-up from 0
    end_learning_rate: float = 0.0  # final rate of cosine / linear, absolute value
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.9  # sgd and big_vision_adafactor (0 disables)
    weight_decay: float = 0.0  # decoupled, for adamw / lion / sgd / (big_vision_)adafactor
    # Regex (re.fullmatch) on '/'-joined param names that weight decay applies to; ".*" = every
    # param. big_vision decays kernels only: ".*/kernel$".
    weight_decay_pattern: str = ".*"
    grad_clip_norm: float = 0.0  # 0 disables clipping by global norm
    # big_vision_adafactor only (defaults: big_vision/optax.py scale_by_adafactor):
    beta2_cap: float = 0.999  # beta2_t = min(beta2_cap, 1 - (t + 1)^-beta2_exponent)
    beta2_exponent: float = 0.8  # big_vision's decay_rate
    min_dim_size_to_factor: int = 32  # factor a leaf's 2nd moment if 2 dims are this big
    clipping_threshold: float = 0.0  # block-RMS update clipping; 0 disables (big_vision None)
    momentum_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # the momentum's accumulator

    def __post_init__(self):
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(self.end_learning_rate >= 0, "end_learning_rate", "must be >= 0")
        for field in ("b1", "b2"):
            require(0.0 <= getattr(self, field) < 1.0, field, "must be in [0, 1)")
        require(self.eps > 0, "eps", "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.name != "adam" or self.weight_decay == 0, "weight_decay",
                "needs name='adamw' (decoupled decay) instead of 'adam'")
        require(self.grad_clip_norm >= 0, "grad_clip_norm", "must be >= 0 (0 disables it)")
        require(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        try:
            re.compile(self.weight_decay_pattern)
        except re.error as error:
            raise FieldError("weight_decay_pattern", f"not a regular expression ({error})"
                             ) from None
        require(0.0 < self.beta2_cap <= 1.0, "beta2_cap", "must be in (0, 1]")
        require(self.beta2_exponent > 0, "beta2_exponent", "must be > 0")
        require(self.min_dim_size_to_factor >= 1, "min_dim_size_to_factor", "must be >= 1")
        require(self.clipping_threshold >= 0, "clipping_threshold",
                "must be >= 0 (0 disables clipping)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """The top-level fields the shared loop reads (fsq_jax.train.train_and_evaluate).

    A task's schema extends this class with its own sections.
    """

    task: str = "fsq_jax.tasks.autoencoder:AutoencoderTask"  # "module.path:ClassName"
    seed: int = 0
    total_steps: int = 1000
    batch_size: int = 32  # global, over all devices and hosts
    eval_batch_size: int = 32
    log_every: int = 50  # 0 = only at the end
    eval_every: int = 500
    images_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    ema_decay: float = 0.0  # EMA of the params used for evaluation; 0 disables it
    nan_policy: NanPolicy = "stop"  # a NaN/Inf update: stop the run, or skip the update
    # nan_policy="skip": a run whose updates are skipped more than this many times in a row is
    # diverging, not unlucky, and stops (NonFiniteError); the last good checkpoint is kept.
    max_consecutive_skips: int = 10
    fsdp: bool = False  # shard params and optimiser state over the devices
    eval_steps: int = 4  # validation batches averaged by the eval step
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def __post_init__(self):
        module, _, name = self.task.partition(":")
        require(bool(module) and name.isidentifier() and self.task.count(":") == 1, "task",
                "must be 'module.path:ClassName'")
        for field in ("total_steps", "batch_size", "eval_batch_size", "keep_checkpoints",
                      "max_consecutive_skips"):
            require(getattr(self, field) >= 1, field, "must be >= 1")
        for field in ("log_every", "eval_every", "images_every", "checkpoint_every",
                      "eval_steps", "seed"):
            require(getattr(self, field) >= 0, field, "must be >= 0")
        require(0.0 <= self.ema_decay < 1.0, "ema_decay", "must be in [0, 1) (0 disables it)")


def data(**overrides) -> ml_collections.ConfigDict:
    """The `data` section with its defaults, updated with `overrides`."""
    section = defaults(DataConfig)
    section.update(overrides)
    return section


def optimizer(**overrides) -> ml_collections.ConfigDict:
    """An optimizer section with its defaults, updated with `overrides`."""
    section = defaults(OptimizerConfig)
    section.update(overrides)
    return section


def loop(**overrides) -> ml_collections.ConfigDict:
    """The loop's fields (and the `data` section) with their defaults, updated with
    `overrides`; experiment configs add their task's sections to it."""
    config = defaults(LoopConfig)
    config.update(overrides)
    return config
