"""Evaluators of the two MaskGIT stages, built from `fsq_jax.eval` and the tasks' host functions.

Stage I: reconstruction FID (reconstructions of the first `num_images` validation images) and
codebook usage. Stage II: sampling FID, precision and recall of class-conditional samples (labels
from the first `num_images` validation examples). Both compare with the same reference, as the
FSQ paper does (reconstructions and samples both against the ImageNet train set):

* `evaluators.reference = ""`: statistics of the run's train split, read once over the whole
  split (or its first `reference_images`) without augmentation (centre crop, no flip), every
  example once over all hosts, cached under a key naming the data (`reference_key`);
  precision/recall against the features of the split's first `num_images` images.
* `evaluators.reference = PATH`: an ADM reference batch `.npz` (e.g. guided-diffusion's
  `VIRTUAL_imagenet256_labeled.npz`): FID against its `mu`/`sigma`, precision/recall against
  its images `arr_0`, as the ADM suite (`fsq_jax.eval.adm`) scores a samples file.

Batches, devices and randomness come from the loop's `EvalContext`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any

import ml_collections
from absl import logging

from fsq_jax import quantizers
from fsq_jax.config_lib import require
from fsq_jax.eval import evaluators as eval_lib
from fsq_jax.eval import fid, inception, references
from fsq_jax.train.evaluation import SkippedEvaluator


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerEvaluators:
    """`evaluators.*` of stage I."""

    fid: bool  # reconstruction FID (needs the Inception weights: `make inception`)
    usage: bool  # codebook usage over the evaluation images
    num_images: int
    batch_size: int
    out_dir: str  # where the usage histogram PNG and counts go ("" = not written)
    reference: str  # "" = train-split statistics computed here; else an ADM reference .npz
    reference_images: int  # train images in those statistics (0 = the whole split)

    def __post_init__(self):
        require(self.num_images >= 2, "num_images", "must be >= 2")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check_reference(self.reference, self.reference_images)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerEvaluators:
    """`evaluators.*` of stage II."""

    fid: bool  # sampling FID, precision, recall (needs `make inception`)
    num_images: int
    batch_size: int
    reference: str  # "" = train-split statistics computed here; else an ADM reference .npz
    reference_images: int  # train images in those statistics (0 = the whole split)

    def __post_init__(self):
        require(self.num_images >= 2, "num_images", "must be >= 2")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check_reference(self.reference, self.reference_images)


def _check_reference(reference: str, reference_images: int) -> None:
    require(not reference or reference.endswith(".npz"), "reference",
            "must be '' (train-split statistics) or an ADM reference batch .npz")
    require(not reference or os.path.isfile(reference), "reference", "no such file")
    require(reference_images == 0 or reference_images >= 2, "reference_images",
            "must be 0 (the whole train split) or >= 2")


def reference_key(config: ml_collections.ConfigDict, split: str = "train",
                  num_images: int = 0) -> str:
    """Cache key of the real-image statistics of `split`: everything that decides its images
    (source, data seed, resolution, evaluation crop; the scenes' generator settings and split
    size) and how many of them ("full" = the whole split)."""
    data = config.data
    readable = data.source.replace(":", "-", 1)
    source = re.sub(r"[^A-Za-z0-9_.,=+-]|\.\.", "_", readable)
    if source != readable:  # a folder path: keep distinct paths apart
        source += "-" + hashlib.sha1(data.source.encode()).hexdigest()[:8]
    if data.source == "scenes":
        size = data.train_size if split == "train" else data.eval_size
        source += f"-objects{data.min_objects}-{data.max_objects}-of{size}"
    crop = "center" if data.crop == "random" else data.crop  # evaluation never crops randomly
    count = "full" if num_images == 0 else f"n{num_images}"
    return f"maskgit/{source}-seed{data.seed}/{split}/{data.image_size}-{crop}/{count}"


def reference(config: ml_collections.ConfigDict, precision_recall: bool
              ) -> references.SplitReference | references.ADMReference:
    """The reference of `config.evaluators` (see the module docstring)."""
    evaluators = config.evaluators
    if evaluators.reference:
        return references.ADMReference(evaluators.reference)
    count = int(evaluators.reference_images)
    return references.SplitReference(
        reference_key(config, "train", count), "train", num_examples=count or None,
        pr_examples=int(evaluators.num_images) if precision_recall else 0)


def fid_skip_reason(config: ml_collections.ConfigDict) -> str | None:
    """Why FID cannot run although `evaluators.fid` is on (the InceptionV3 weights are
    missing), or None; when there is a reason, says so in the log too."""
    if not config.evaluators.fid:
        return None
    try:
        inception.load()
    except FileNotFoundError as error:
        logging.warning("evaluators.fid is on but the InceptionV3 weights are missing: FID, "
                        "precision and recall are skipped. Run `make inception` once to "
                        "convert them (or set --config.evaluators.fid=False).")
        return f"skipped: {error}"
    return None


def inception_available(config: ml_collections.ConfigDict) -> bool:
    """Whether FID can run; when it is on but the weights are missing, says so once."""
    return bool(config.evaluators.fid) and fid_skip_reason(config) is None


def fid_evaluator(config: ml_collections.ConfigDict, name: str, generate_fn: Any, *,
                  precision_recall: bool, extractor: fid.FeatureFn | None = None,
                  cache_dir: str | os.PathLike | None = None) -> eval_lib.FIDEvaluator:
    """FID (with precision/recall) of `generate_fn` on the first `num_images` validation
    batches against `reference(config)`; small sets (<= 2048 images on either side) are
    allowed, with pytorch-fid's eps offset, for tiny runs."""
    num_images = int(config.evaluators.num_images)
    reference_images = int(config.evaluators.reference_images)
    small = num_images <= inception.FEATURE_DIM or (
        not config.evaluators.reference and 0 < reference_images <= inception.FEATURE_DIM)
    return eval_lib.FIDEvaluator(
        name, generate_fn, num_samples=num_images, batch_size=int(config.evaluators.batch_size),
        reference=reference(config, precision_recall), split="validation",
        compute_precision_recall=precision_recall, cache_dir=cache_dir, extractor=extractor,
        allow_singular=small)


def tokenizer_evaluators(task: Any) -> list[Any]:
    """[reconstruction FID (when enabled and the Inception weights exist), codebook usage]:
    the first `num_images` validation images, each once."""
    config = task.config
    result: list[Any] = []
    skipped = fid_skip_reason(config)
    if skipped is not None:
        result.append(SkippedEvaluator("reconstruction", ("fid",), skipped))
    elif config.evaluators.fid:
        result.append(fid_evaluator(config, "reconstruction",
                                    lambda state, batch, rng, context: task.reconstruct_fn(
                                        state, context.mesh)(batch["image"]),
                                    precision_recall=False))
    if config.evaluators.usage:
        result.append(eval_lib.CodebookUsageEvaluator(
            "codebook", lambda state, batch, context: task.tokenize_fn(
                state, context.mesh)(batch["image"]),
            quantizers.codebook_size(config.quantizer),
            num_examples=int(config.evaluators.num_images),
            batch_size=int(config.evaluators.batch_size),
            out_dir=config.evaluators.out_dir or None))
    return result


def transformer_evaluators(task: Any) -> list[Any]:
    """[sampling FID + precision + recall] (when enabled and the Inception weights exist; a
    `SkippedEvaluator` saying why when they are missing)."""
    skipped = fid_skip_reason(task.config)
    if skipped is not None:
        return [SkippedEvaluator("sampling", ("fid", "precision", "recall"), skipped)]
    if not task.config.evaluators.fid:
        return []
    return [fid_evaluator(task.config, "sampling",
                          lambda state, batch, rng, context: task.sample_fn(state, context.mesh)(
                              batch["label"], rng),
                          precision_recall=True)]


def real_images_baseline(config: ml_collections.ConfigDict, context: Any) -> dict[str, float]:
    """Sampling FID, precision and recall of real validation images in place of samples.

    The best any generator can score under the same evaluation (same image count, same
    reference): FID's small-sample bias and the noise of precision/recall at this size.
    """
    evaluator = fid_evaluator(config, "sampling",
                              lambda state, batch, rng, context: batch["image"],
                              precision_recall=True)
    return dict(evaluator.run(None, context))
