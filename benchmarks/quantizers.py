"""Forward+backward throughput of our FSQ and VQ against the PyTorch reference, and FSQ memory.

Times jit-compiled `value_and_grad` of FSQ [8,5,5,5] and VQ 1024x256 (EMA codebook updates on)
on a batch of 64x16x16 vectors, next to lucidrains' vector-quantize-pytorch `FSQ` and
`VectorQuantize` (training mode, so its EMA updates run too) when that package is importable, and
prints the ratios. Then prints the compiled peak memory of FSQ for codebooks of 2^8..2^24 codes,
which stays flat because the implicit codebook is never materialised.

    .venv/bin/python benchmarks/quantizers.py [--repeats 30] [--min-time 0.1]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fsq_jax.quantizers import FSQ, RNG_STREAM, STATE_COLLECTION, VQ

BATCH, HEIGHT, WIDTH = 64, 16, 16
NUM_VECTORS = BATCH * HEIGHT * WIDTH
FSQ_LEVELS = (8, 5, 5, 5)
VQ_SIZE, VQ_DIM = 1024, 256

# Levels per target codebook size: paper Table 1 up to 2^16, then products of 8s, 4s and 2s.
MEMORY_LEVELS = {
    8: (8, 6, 5),
    10: (8, 5, 5, 5),
    12: (7, 5, 5, 5, 5),
    14: (8, 8, 8, 6, 5),
    16: (8, 8, 8, 5, 5, 5),
    18: (8, 8, 8, 8, 8, 8),
    20: (8, 8, 8, 8, 8, 8, 4),
    22: (8, 8, 8, 8, 8, 8, 8, 2),
    24: (8, 8, 8, 8, 8, 8, 8, 8),
}


def _calibrate(fn: Callable[[], object], min_time: float) -> int:
    """Calls per timing round so that one round lasts at least `min_time` seconds."""
    fn()  # warm-up (compilation, allocator, lazy initialisation)
    fn()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start >= min_time or calls >= 4096:
            return calls
        calls *= 2


def _round(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def best_seconds(*fns: Callable[[], object], repeats: int, min_time: float) -> list[float]:
    """Best per-call time of each function over `repeats` interleaved timing rounds.

    Rounds alternate between the functions, so on a shared machine each sees the same spells of
    contention, and the best round is the least disturbed one.
    """
    calls = [_calibrate(fn, min_time) for fn in fns]
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _round(fn, calls[i]))
    return best


def jax_fsq_step() -> Callable[[], object]:
    fsq = FSQ(levels=FSQ_LEVELS)
    z = jax.random.normal(jax.random.PRNGKey(0), (BATCH, HEIGHT, WIDTH, len(FSQ_LEVELS)))
    cotangent = jax.random.normal(jax.random.PRNGKey(1), z.shape)

    @jax.jit
    def step(z):
        def loss(z):
            out = fsq.apply({}, z)
            return jnp.sum(out.quantized * cotangent) + out.loss, out.indices

        return jax.value_and_grad(loss, has_aux=True)(z)

    return lambda: jax.block_until_ready(step(z))


def jax_vq_step() -> Callable[[], object]:
    vq = VQ(codebook_size=VQ_SIZE, dim=VQ_DIM, use_ema=True, ema_decay=0.99)
    z = jax.random.normal(jax.random.PRNGKey(0), (BATCH, HEIGHT, WIDTH, VQ_DIM))
    cotangent = jax.random.normal(jax.random.PRNGKey(1), z.shape)
    variables = vq.init({"params": jax.random.PRNGKey(2)}, z)

    @jax.jit
    def step(variables, z):
        def loss(z):
            out, state = vq.apply(
                variables,
                z,
                train=True,
                mutable=[STATE_COLLECTION],
                rngs={RNG_STREAM: jax.random.PRNGKey(3)},
            )
            return jnp.sum(out.quantized * cotangent) + out.loss, state

        (value, state), grad = jax.value_and_grad(loss, has_aux=True)(z)
        return {**variables, **state}, value, grad

    holder = {"variables": variables}

    def run():
        holder["variables"], value, grad = step(holder["variables"], z)
        jax.block_until_ready((value, grad))

    return run


def torch_steps() -> dict[str, Callable[[], object]] | None:
    try:
        import torch
        import vector_quantize_pytorch as reference
    except ImportError:
        return None
    torch.manual_seed(0)
    fsq = reference.FSQ(levels=list(FSQ_LEVELS))
    z_fsq = torch.randn(BATCH, HEIGHT * WIDTH, len(FSQ_LEVELS), requires_grad=True)
    cot_fsq = torch.randn_like(z_fsq)

    def fsq_step():
        z_fsq.grad = None
        quantized, _ = fsq(z_fsq)
        (quantized * cot_fsq).sum().backward()

    vq = reference.VectorQuantize(
        dim=VQ_DIM, codebook_size=VQ_SIZE, decay=0.99, commitment_weight=0.25, rotation_trick=False
    )
    vq.train()
    z_vq = torch.randn(BATCH, HEIGHT * WIDTH, VQ_DIM, requires_grad=True)
    cot_vq = torch.randn_like(z_vq)

    def vq_step():
        z_vq.grad = None
        quantized, _, commit_loss = vq(z_vq)
        ((quantized * cot_vq).sum() + commit_loss.sum()).backward()

    return {"fsq": fsq_step, "vq": vq_step, "version": _torch_versions()}


def _torch_versions() -> str:
    import importlib.metadata

    import torch

    package = importlib.metadata.version("vector-quantize-pytorch")
    return (
        f"torch {torch.__version__}, vector-quantize-pytorch {package}, "
        f"threads {torch.get_num_threads()}"
    )


def fsq_peak_memory(levels: tuple[int, ...]) -> int:
    """Bytes XLA allocates (arguments + outputs + temporaries) for FSQ forward+backward."""
    fsq = FSQ(levels=levels)
    z = jax.ShapeDtypeStruct((BATCH, HEIGHT, WIDTH, len(levels)), jnp.float32)

    def step(z):
        def loss(z):
            out = fsq.apply({}, z)
            return jnp.sum(out.quantized**2) + out.loss, out.indices

        return jax.value_and_grad(loss, has_aux=True)(z)

    stats = jax.jit(step).lower(z).compile().memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timing rounds; the best is kept")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per timing round")
    args = parser.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {NUM_VECTORS} vectors per step")
    reference = torch_steps()
    if reference is None:
        print("vector-quantize-pytorch not importable: reference columns skipped")
    else:
        print(f"reference: {reference['version']}")
    rows = [
        (f"FSQ {list(FSQ_LEVELS)}", jax_fsq_step(), reference and reference["fsq"], 5.0),
        (f"VQ {VQ_SIZE}x{VQ_DIM} + EMA", jax_vq_step(), reference and reference["vq"], 3.0),
    ]
    print(
        f"{'quantizer':<24}{'ours (vec/s)':>16}{'reference (vec/s)':>20}{'ratio':>9}{'target':>9}"
    )
    for name, ours, theirs, target in rows:
        if theirs is None:
            (ours_time,) = best_seconds(ours, repeats=args.repeats, min_time=args.min_time)
            print(f"{name:<24}{NUM_VECTORS / ours_time:>16,.0f}{'-':>20}{'-':>9}{target:>8.0f}x")
            continue
        ours_time, theirs_time = best_seconds(
            ours, theirs, repeats=args.repeats, min_time=args.min_time
        )
        ratio = theirs_time / ours_time
        flag = "ok" if ratio >= target else "below"
        print(
            f"{name:<24}{NUM_VECTORS / ours_time:>16,.0f}{NUM_VECTORS / theirs_time:>20,.0f}"
            f"{ratio:>8.1f}x{target:>8.0f}x {flag}"
        )

    print("\nFSQ forward+backward compiled memory (arguments + outputs + temporaries);")
    print("it scales with the number of channels d = len(levels), never with the codebook size:")
    print(f"{'codebook':>10}{'size':>12}  {'levels':<28}{'bytes':>12}{'bytes / d':>12}")
    for log2_size, levels in MEMORY_LEVELS.items():
        size, memory = math.prod(levels), fsq_peak_memory(levels)
        print(
            f"{'2^' + str(log2_size):>10}{size:>12}  {list(levels)!s:<28}"
            f"{memory:>12,}{memory // len(levels):>12,}"
        )


if __name__ == "__main__":
    main()
