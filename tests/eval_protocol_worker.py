"""One pass of every evaluation kind over small procedural-scene splits, alone or as one process
of a multi-process run (tests/test_eval_protocol.py runs it both ways and compares).

    python tests/eval_protocol_worker.py --out OUT.json --cache_dir DIR \
        [--coordinator localhost:PORT --num_processes 2 --process_id I]
"""

from __future__ import annotations

import argparse
import hashlib
import json

EVAL_SIZE = 37  # odd: the last global batch of 16 holds 5 real examples and 11 of padding
TRAIN_SIZE = 29
BATCH = 16
NUM_CODES = 8
PR_EXAMPLES = 20


def data_config():
    from fsq_jax import data

    config = data.default_config()
    config.update(image_size=16, eval_size=EVAL_SIZE, train_size=TRAIN_SIZE, read_threads=0)
    return config


def image_id(image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()[:16]


def codes(images):
    """A code per image, from its pixels (jit-able): [B, H, W, 3] -> int32 [B]."""
    import jax.numpy as jnp

    return jnp.sum(images.astype(jnp.int32), axis=(1, 2, 3)) % NUM_CODES


def batch_mean(state, batch, rng):
    """An eval step: the batch's mean pixel (a batch statistic, as eval-step metrics are)."""
    import jax.numpy as jnp

    del state, rng
    return {"mean_pixel": jnp.mean(batch["image"].astype(jnp.float32))}


def evaluate(cache_dir: str) -> dict:
    """Identities of the examples each process scored and every evaluator's numbers."""
    import jax
    import numpy as np
    from test_fid import BlockMeanFeatures

    from fsq_jax import data
    from fsq_jax.eval import evaluators, references
    from fsq_jax.train import evaluation, sharding

    context = evaluation.EvalContext(sharding.create_mesh(), jax.random.key(0), 0, data.build,
                                     data_config())
    local, gathered = [], []
    batches = context.batches(BATCH)
    for batch in batches:
        local += [image_id(image) for image in context.real(batch)["image"]]
        gathered += [image_id(image) for image in context.gather(batch["image"], batch)]
    jitted_codes = jax.jit(codes)
    out_dir = f"{cache_dir}/usage{jax.process_index()}"
    usage = evaluators.CodebookUsageEvaluator(
        "usage", lambda state, batch, context: context.run(jitted_codes, (), batch["image"]),
        NUM_CODES, num_examples=None, batch_size=BATCH, out_dir=out_dir)
    identity = jax.jit(lambda images: images)
    fid = evaluators.FIDEvaluator(
        "fid", lambda state, batch, rng, context: context.run(identity, (), batch["image"]),
        num_samples=EVAL_SIZE, batch_size=BATCH, cache_dir=cache_dir, allow_singular=True,
        reference=references.SplitReference("test/scenes/train/full", "train",
                                            pr_examples=PR_EXAMPLES),
        extractor=BlockMeanFeatures())
    eval_metrics, _ = evaluation.average_eval_steps(jax.jit(batch_mean), None, context, BATCH, 2)
    return {
        "num_examples": batches.num_examples,
        "local": local,
        "gathered": gathered,
        "usage": dict(usage.run(None, context)),
        "counts": np.load(f"{out_dir}/usage_counts.npy").tolist(),
        "fid": dict(fid.run(None, context)),
        "eval": eval_metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    args = parser.parse_args()
    from fsq_jax.train import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           cpu_collectives="gloo" if args.coordinator else None)
    import jax

    result = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              **evaluate(args.cache_dir)}
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
