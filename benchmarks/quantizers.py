"""Forward+backward throughput of our FSQ and VQ against a plain formula and the PyTorch reference.

Times jit-compiled `value_and_grad` of FSQ [8,5,5,5] and VQ 1024x256 (EMA codebook updates on)
on a batch of 64x16x16 vectors, each in three forms timed side by side in interleaved rounds:
our module (also with its batch metrics returned, as a training step that logs them), the same
quantizer written as a plain jitted formula (the paper's FSQ listing; nearest code by argmin and
segment-sum EMA statistics for VQ), and lucidrains' vector-quantize-pytorch `FSQ` and
`VectorQuantize` (training mode, so its EMA updates run too) when that package is importable.
Before timing it checks that the module and the formula give the same indices. Prints each
speed, its ratio to the reference and the module's ratio to the formula, with the load average
(the machine is shared: ratios from one run are comparable, absolute speeds less so). Then
prints the compiled peak memory of FSQ for codebooks of 2^8..2^24 codes, which stays flat because
the implicit codebook is never materialised.

    .venv/bin/python benchmarks/quantizers.py [--repeats 30] [--min_time 0.1] [--skip_memory]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from fsq_jax.quantizers import FSQ, RNG_STREAM, STATE_COLLECTION, VQ
from fsq_jax.train import cli

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


_REPEATS = flags.DEFINE_integer("repeats", 30, "Timing rounds; the best is kept.")
_MIN_TIME = flags.DEFINE_float("min_time", 0.1, "Seconds per timing round.")
_SKIP_MEMORY = flags.DEFINE_bool("skip_memory", False, "Skip the FSQ memory table.")


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
    contention, and the best round is the least disturbed one. The order rotates from one repeat
    to the next, so no function always runs first after the others.
    """
    calls = [_calibrate(fn, min_time) for fn in fns]
    best = [math.inf] * len(fns)
    for repeat in range(repeats):
        for offset in range(len(fns)):
            i = (repeat + offset) % len(fns)
            best[i] = min(best[i], _round(fns[i], calls[i]))
    return best


def _fsq_inputs() -> tuple[jax.Array, jax.Array]:
    z = jax.random.normal(jax.random.PRNGKey(0), (BATCH, HEIGHT, WIDTH, len(FSQ_LEVELS)))
    return z, jax.random.normal(jax.random.PRNGKey(1), z.shape)


def jax_fsq_step(with_metrics: bool = False) -> Callable[[], object]:
    """Our FSQ module; with_metrics also returns its batch metrics (else XLA drops them)."""
    fsq = FSQ(levels=FSQ_LEVELS)
    z, cotangent = _fsq_inputs()

    @jax.jit
    def step(z):
        def loss(z):
            out = fsq.apply({}, z)
            aux = (out.indices, out.metrics) if with_metrics else out.indices
            return jnp.sum(out.quantized * cotangent) + out.loss, aux

        return jax.value_and_grad(loss, has_aux=True)(z)

    return lambda: jax.block_until_ready(step(z))


def plain_fsq(z: jax.Array, levels: tuple[int, ...] = FSQ_LEVELS) -> tuple[jax.Array, jax.Array]:
    """FSQ as the paper's listing writes it (docs: paper.md section 1), for comparison.

    Returns (codes [..., d] float32 with straight-through gradients, int32 indices [...]).
    """
    levels_np = np.asarray(levels)
    half_l = (levels_np - 1) * (1 - 1e-3) / 2
    offset = np.where(levels_np % 2 == 0, 0.5, 0.0)
    shift = np.tan(offset / half_l)
    half_width = levels_np // 2
    basis = np.cumprod([1, *levels_np[:-1]]).astype(np.int32)
    bounded = jnp.tanh(z + shift) * half_l - offset
    q = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    codes = q / half_width
    digits = jnp.round(jax.lax.stop_gradient(codes) * half_width + half_width).astype(jnp.int32)
    return codes, jnp.sum(digits * basis, axis=-1)


def jax_fsq_plain_step() -> Callable[[], object]:
    z, cotangent = _fsq_inputs()

    @jax.jit
    def step(z):
        def loss(z):
            codes, indices = plain_fsq(z)
            return jnp.sum(codes * cotangent), indices

        return jax.value_and_grad(loss, has_aux=True)(z)

    return lambda: jax.block_until_ready(step(z))


def fsq_agreement() -> str:
    """Whether the module and the plain formula give the same codes and indices."""
    z, _ = _fsq_inputs()
    out = jax.jit(FSQ(levels=FSQ_LEVELS).apply)({}, z)
    codes, indices = jax.jit(plain_fsq)(z)
    same = bool(jnp.all(out.indices == indices)) and bool(jnp.all(out.quantized == codes))
    return "same codes and indices" if same else "DIFFERENT codes or indices"


def _vq_inputs() -> tuple[jax.Array, jax.Array]:
    z = jax.random.normal(jax.random.PRNGKey(0), (BATCH, HEIGHT, WIDTH, VQ_DIM))
    return z, jax.random.normal(jax.random.PRNGKey(1), z.shape)


def _stateful(step: Callable, variables: dict, z: jax.Array) -> Callable[[], object]:
    """A benchmark call that threads the EMA state from one step to the next."""
    holder = {"variables": variables}

    def run():
        holder["variables"], value, grad = step(holder["variables"], z)
        jax.block_until_ready((value, grad))

    return run


def jax_vq_step(with_metrics: bool = False) -> Callable[[], object]:
    vq = VQ(codebook_size=VQ_SIZE, dim=VQ_DIM, use_ema=True, ema_decay=0.99)
    z, cotangent = _vq_inputs()
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
            aux = (state, out.metrics) if with_metrics else (state, out.indices)
            return jnp.sum(out.quantized * cotangent) + out.loss, aux

        (value, (state, _)), grad = jax.value_and_grad(loss, has_aux=True)(z)
        return {**variables, **state}, value, grad

    return _stateful(step, variables, z)


def plain_vq_ema(flat: jax.Array, state: dict, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """Nearest-code VQ with EMA codebook updates as a plain formula, for comparison.

    Args:
      flat: [N, D]; state: {"codebook", "ema_count", "ema_sum"}.
    Returns:
      (quantized [N, D] straight-through, commitment loss, int32 indices [N], new state).
    """
    codebook = state["codebook"]
    distances = jnp.sum(codebook**2, axis=-1) - 2.0 * jnp.matmul(
        jax.lax.stop_gradient(flat), codebook.T, precision=jax.lax.Precision.HIGHEST
    )
    indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    codes = codebook[indices]
    quantized = flat + jax.lax.stop_gradient(codes - flat)
    loss = beta * jnp.mean((flat - codes) ** 2)
    flat_sg = jax.lax.stop_gradient(flat)
    counts = jax.ops.segment_sum(jnp.ones_like(indices, jnp.float32), indices, VQ_SIZE)
    ema_count = decay * state["ema_count"] + (1 - decay) * counts
    ema_sum = decay * state["ema_sum"] + (1 - decay) * jax.ops.segment_sum(
        flat_sg, indices, VQ_SIZE
    )
    total = jnp.sum(ema_count)
    smoothed = (ema_count + eps) / (total + VQ_SIZE * eps) * total
    new_state = {"codebook": ema_sum / smoothed[:, None], "ema_count": ema_count,
                 "ema_sum": ema_sum}
    return quantized, loss, indices, new_state


def _plain_vq_state() -> dict:
    vq = VQ(codebook_size=VQ_SIZE, dim=VQ_DIM, use_ema=True, ema_decay=0.99)
    z, _ = _vq_inputs()
    return dict(vq.init({"params": jax.random.PRNGKey(2)}, z)[STATE_COLLECTION])


def jax_vq_plain_step() -> Callable[[], object]:
    z, cotangent = _vq_inputs()

    @jax.jit
    def step(state, z):
        def loss(z):
            quantized, aux_loss, _, new_state = plain_vq_ema(z.reshape(-1, VQ_DIM), state)
            return jnp.sum(quantized.reshape(z.shape) * cotangent) + aux_loss, new_state

        (value, new_state), grad = jax.value_and_grad(loss, has_aux=True)(z)
        return new_state, value, grad

    return _stateful(step, _plain_vq_state(), z)


def vq_agreement() -> str:
    """Whether the module and the plain formula pick the same codes over two EMA steps."""
    vq = VQ(codebook_size=VQ_SIZE, dim=VQ_DIM, use_ema=True, ema_decay=0.99)
    z, _ = _vq_inputs()
    variables = vq.init({"params": jax.random.PRNGKey(2)}, z)
    state = _plain_vq_state()
    module = jax.jit(lambda v, z: vq.apply(v, z, train=True, mutable=[STATE_COLLECTION]))
    plain = jax.jit(lambda s, z: plain_vq_ema(z.reshape(-1, VQ_DIM), s))
    for _ in range(2):
        out, new = module(variables, z)
        variables = {**variables, **new}
        _, _, indices, state = plain(state, z)
        if not bool(jnp.all(out.indices.reshape(-1) == indices)):
            return "DIFFERENT indices"
    return "same indices"


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


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def compare(name: str, variants: dict[str, Callable[[], object]], target: float,
            repeats: int, min_time: float) -> None:
    """Times the variants in interleaved rounds and prints speeds and ratios."""
    names = [key for key, fn in variants.items() if fn is not None]
    seconds = dict(zip(names, best_seconds(*(variants[k] for k in names), repeats=repeats,
                                           min_time=min_time), strict=True))
    reference = seconds.get("reference")
    for key in names:
        ratio = "-" if reference is None else f"{reference / seconds[key]:.2f}x"
        print(f"{name:<24}{key:<20}{NUM_VECTORS / seconds[key]:>16,.0f}{ratio:>16}")
        name = ""
    summary = f"module vs plain formula {seconds['plain formula'] / seconds['module']:.2f}x"
    if reference is not None:
        ratio = reference / seconds["module"]
        verdict = "ok" if ratio >= target else "below"
        summary += f"; module vs reference {ratio:.2f}x, target {target:.0f}x {verdict}"
    print(f"{'':<24}{summary}")


def main(argv: list[str]) -> None:
    cli.start(argv)

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {NUM_VECTORS} vectors per step")
    reference = torch_steps()
    if reference is None:
        print("vector-quantize-pytorch not importable: reference columns skipped")
        reference = {"fsq": None, "vq": None}
    else:
        print(f"reference: {reference['version']}")
    print(f"FSQ module vs plain formula: {fsq_agreement()}; VQ: {vq_agreement()}")
    print(f"before timing: {_load()}")
    print(f"{'quantizer':<24}{'variant':<20}{'vec/s':>16}{'vs reference':>16}")
    compare(
        f"FSQ {list(FSQ_LEVELS)}",
        {
            "module": jax_fsq_step(),
            "module + metrics": jax_fsq_step(with_metrics=True),
            "plain formula": jax_fsq_plain_step(),
            "reference": reference["fsq"],
        },
        5.0, _REPEATS.value, _MIN_TIME.value,
    )
    compare(
        f"VQ {VQ_SIZE}x{VQ_DIM} + EMA",
        {
            "module": jax_vq_step(),
            "module + metrics": jax_vq_step(with_metrics=True),
            "plain formula": jax_vq_plain_step(),
            "reference": reference["vq"],
        },
        5.0, _REPEATS.value, _MIN_TIME.value,
    )
    print(f"after timing: {_load()}")
    if _SKIP_MEMORY.value:
        return

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
    cli.run(main)
