"""Codebook usage report of a tokenizer over an evaluation split: numbers and a histogram PNG.

Usage (fraction of codes used at least once) is the paper's headline codebook statistic;
perplexity and the entropy in bits of the code distribution (an input to the compression cost)
come with it. The numbers are `fsq_jax.codebook`'s numpy helpers applied to the accumulated
histogram; `CodeCounter` accumulates that histogram from batches of indices.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fsq_jax import codebook


class CodeCounter:
    """Histogram of code indices over batches: `update(indices)` with int indices of any shape."""

    def __init__(self, codebook_size: int):
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}.")
        self.codebook_size = codebook_size
        self.counts = np.zeros(codebook_size, np.int64)

    def update(self, indices: np.ndarray) -> CodeCounter:
        indices = np.asarray(indices)
        if not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices must be integers, got {indices.dtype}.")
        self.counts += codebook.counts_from_indices(indices, self.codebook_size)
        return self

    def merge(self, other: CodeCounter) -> CodeCounter:
        if other.codebook_size != self.codebook_size:
            raise ValueError("cannot merge histograms of different codebook sizes.")
        self.counts += other.counts
        return self


def codebook_stats(counts: np.ndarray) -> dict[str, float]:
    """`usage`, `perplexity`, `entropy_bits`, `codebook_size`, `num_tokens` of a histogram `[K]`."""
    counts = np.asarray(counts)
    return {
        "usage": codebook.usage(counts),
        "perplexity": codebook.perplexity(counts),
        "entropy_bits": codebook.entropy_bits(counts),
        "codebook_size": float(counts.size),
        "num_tokens": float(counts.sum()),
    }


def save_histogram_png(counts: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Plot code frequencies (codes sorted by count, log scale) and their raw order to a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg canvas

    counts = np.asarray(counts, np.float64)
    total = max(counts.sum(), 1.0)
    stats = codebook_stats(counts)
    fig = Figure(figsize=(10, 3.5))
    axes = fig.subplots(1, 2)
    ranked = np.sort(counts)[::-1] / total
    axes[0].set(xlabel="code rank", ylabel="frequency")
    if ranked[0] > 0:  # log axes need at least one used code
        axes[0].plot(np.arange(1, counts.size + 1), np.where(ranked > 0, ranked, np.nan))
        axes[0].set(xscale="log", yscale="log")
    axes[1].bar(np.arange(counts.size), counts / total, width=1.0)
    axes[1].set(xlabel="code index", ylabel="frequency")
    fig.suptitle(f"{title} usage {stats['usage']:.1%}, perplexity {stats['perplexity']:.1f}, "
                 f"entropy {stats['entropy_bits']:.2f} bits".strip())
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
