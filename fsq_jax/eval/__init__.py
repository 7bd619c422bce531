"""Evaluation suite: FID with the Flax FID InceptionV3, precision/recall, codebook usage, depth
errors and panoptic quality, as pure accumulators plus thin big_vision-style evaluators.

Importing the package loads no weights (`inception.load` does) and no matplotlib (the histogram
writer imports it when called).
"""

from fsq_jax.eval import codebook_report, depth, evaluators, fid, inception, panoptic, prdc

__all__ = ["codebook_report", "depth", "evaluators", "fid", "inception", "panoptic", "prdc"]
