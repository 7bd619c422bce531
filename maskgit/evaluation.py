"""Evaluators of the two MaskGIT stages, built from `fsq_jax.eval` and the tasks' host functions.

Stage I: reconstruction FID (reconstructions of validation images against those images) and
codebook usage. Stage II: sampling FID, precision and recall of class-conditional samples (labels
from the validation stream) against the training split, as the FSQ paper evaluates. Batches,
devices and randomness come from the loop's `EvalContext`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from absl import logging

from fsq_jax import quantizers
from fsq_jax.config_lib import require
from fsq_jax.eval import evaluators as eval_lib
from fsq_jax.eval import inception
from fsq_jax.train.evaluation import SkippedEvaluator


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerEvaluators:
    """`evaluators.*` of stage I."""

    fid: bool  # reconstruction FID (needs the Inception weights: `make inception`)
    usage: bool  # codebook usage over the evaluation images
    num_images: int
    batch_size: int
    out_dir: str  # where the usage histogram PNG and counts go ("" = not written)

    def __post_init__(self):
        require(self.num_images >= 2, "num_images", "must be >= 2")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerEvaluators:
    """`evaluators.*` of stage II."""

    fid: bool  # sampling FID, precision, recall (needs `make inception`)
    num_images: int
    batch_size: int

    def __post_init__(self):
        require(self.num_images >= 2, "num_images", "must be >= 2")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")


def reference_key(config: ml_collections.ConfigDict, split: str) -> str:
    """Cache key of the reference statistics: source, data seed, split and resolution."""
    source = config.data.source.replace("/", "_").replace(":", "-")
    return f"maskgit/{source}-seed{config.data.seed}/{split}/{config.data.image_size}"


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


def _fid(config: ml_collections.ConfigDict, name: str, generate_fn: Any, reference_split: str,
         precision_recall: bool) -> eval_lib.FIDEvaluator:
    num_images = int(config.evaluators.num_images)
    return eval_lib.FIDEvaluator(
        name, generate_fn, num_samples=num_images, batch_size=int(config.evaluators.batch_size),
        reference_key=reference_key(config, reference_split), reference_split=reference_split,
        compute_precision_recall=precision_recall,
        allow_singular=num_images <= inception.FEATURE_DIM)


def tokenizer_evaluators(task: Any) -> list[Any]:
    """[reconstruction FID (when enabled and the Inception weights exist), codebook usage]."""
    config = task.config
    result: list[Any] = []
    skipped = fid_skip_reason(config)
    if skipped is not None:
        result.append(SkippedEvaluator("reconstruction", ("fid",), skipped))
    elif config.evaluators.fid:
        result.append(_fid(config, "reconstruction",
                           lambda state, batch, rng, context: task.reconstruct_fn(
                               state, context.mesh)(batch["image"]),
                           reference_split="validation", precision_recall=False))
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
    return [_fid(task.config, "sampling",
                 lambda state, batch, rng, context: task.sample_fn(state, context.mesh)(
                     batch["label"], rng),
                 reference_split="train", precision_recall=True)]


def real_images_baseline(config: ml_collections.ConfigDict, context: Any) -> dict[str, float]:
    """Sampling FID, precision and recall of real validation images in place of samples.

    The best any generator can score under the same evaluation (same image count, same
    reference): FID's small-sample bias and the noise of precision/recall at this size.
    """
    evaluator = _fid(config, "sampling", lambda state, batch, rng, context: batch["image"],
                     reference_split="train", precision_recall=True)
    return dict(evaluator.run(None, context))
