"""Per-device memory of a training step, planned on a CPU before any accelerator is rented.

Lowers the loop's real jitted train step (`fsq_jax.train.loop.CompiledSteps`) with abstract
inputs sharded over a fake N-device CPU mesh, compiles it, and reads XLA's memory analysis and
buffer assignment: per-device parameter, optimiser-state, EMA and frozen-model bytes (from the
sharded abstract state), XLA's argument / output / temporary sizes, the peak, and the largest
buffers by name (e.g. the per-pixel depth logits). Nothing is allocated: the state and the batch
are `jax.ShapeDtypeStruct`s, the frozen stage I of a stage-II config too.

  python benchmarks/memory.py --config configs/uvim/depth.py:fsq,paper --devices 8 \
      --per-device-batch 4 [--remat block] [--set model.dropout=0.1] [--json plan.json]

The numbers are XLA:CPU's buffer assignment of the per-device SPMD program: the activations the
backward pass keeps are the same on every backend (they are fixed by the traced program), while
fusion and scratch space differ somewhat on a GPU (docs/performance.md: the table and its headroom).
The script schedules with XLA's memory-minimising scheduler (`MEMORY_SCHEDULER_FLAGS`); `plan()`
called in a process started without those flags keeps XLA:CPU's default, which hides what
rematerialisation saves.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

# This file is named like nothing it imports, but keep the repository root first on the path so
# `python benchmarks/memory.py` imports this checkout's packages.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

GIB = 2**30

# The config field `--remat` sets: the trained model's section of each task.
REMAT_FIELDS = {"uvim.tasks:Stage2Task": "stage2.remat"}
DEFAULT_REMAT_FIELD = "model.remat"


# The plan needs XLA's buffer assignment, not fast CPU code: skip LLVM's optimisations (the
# buffer assignment is the same, compilation of a paper-size step several times shorter).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# XLA:CPU's default HLO scheduler trades memory for concurrency: it schedules each
# rematerialised forward pass (jax.checkpoint / nn.remat) right beside the original one, so a
# CPU plan showed no saving from remat at all (a 6-block conv stack's gradient: 220 MiB of
# temporaries with or without `nothing_saveable`; 76 MiB with checkpointing under the
# memory-minimising scheduler). A GPU's scheduler works under a memory limit; plan with XLA's
# memory-minimising scheduler, as a GPU would run the step.
MEMORY_SCHEDULER_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def force_host_devices(count: int) -> None:
    """Makes JAX's CPU backend show `count` devices and plan with the memory-minimising
    scheduler (call before JAX is imported)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = (f"{flags} {FAST_COMPILE_FLAGS} {MEMORY_SCHEDULER_FLAGS} "
                               f"--xla_force_host_platform_device_count={count}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# ----------------------------------------------------------------------------------------------
# Configs.


def parse_override(text: str) -> tuple[str, Any]:
    """'model.remat=block' -> ('model.remat', 'block'); values are Python literals or strings."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {text!r}: expected field=value")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def stage1_spec(spec: str) -> str | None:
    """The stage-I config spec a stage-II spec trains on, by the repository's conventions:
    `uvim/<task>.py:<q>,<size>,stage2` -> `uvim/<task>.py:<q>,<size>`;
    `maskgit/transformer.py:<args>` -> `maskgit/tokenizer.py:<args>`; None otherwise."""
    path, _, arg = spec.partition(":")
    parts = [p for p in arg.split(",") if p]
    if "stage2" in parts:
        return f"{path}:{','.join(p for p in parts if p != 'stage2')}"
    if path.endswith("maskgit/transformer.py"):
        return f"{path[:-len('transformer.py')]}tokenizer.py:{arg}"
    return None


def planned_remat(config: Any) -> str:
    """The trained model's remat setting ("none" where the model has no such field)."""
    from fsq_jax import config_lib

    field = REMAT_FIELDS.get(config.task, DEFAULT_REMAT_FIELD)
    if not config_lib.has_field(config, field):
        return "none"
    section, _, name = field.partition(".")
    return str(config[section][name])


def load_config(spec: str, overrides: Sequence[str] = (), remat: str = "") -> Any:
    """The config of `spec` with `--set` overrides and `--remat` applied."""
    from fsq_jax import config_lib

    config = config_lib.load(spec)
    if remat:
        field = REMAT_FIELDS.get(config.task, DEFAULT_REMAT_FIELD)
        config_lib.set_field(config, field, remat)
    for text in overrides:
        config_lib.set_field(config, *parse_override(text))
    return config


# ----------------------------------------------------------------------------------------------
# Abstract inputs.


def batch_spec(config: Any, global_batch: int, task: Any = None
               ) -> dict[str, tuple[tuple, Any]]:
    """`{key: (shape, dtype)}` of a global training batch: every key a data source may yield
    (docs/architecture.md), or, given the built `task`, the token cache's `tokens` + `label`
    when `token_cache.dir` is set. Keys the task never reads are pruned by jit (no memory)."""
    import numpy as np

    b, size = global_batch, int(config.data.image_size)
    if task is not None and "token_cache" in config and config.token_cache.dir:
        return {"tokens": ((b, task.seq_len), np.int32), "label": ((b,), np.int32)}
    return {"image": ((b, size, size, 3), np.uint8), "label": ((b,), np.int32),
            "depth": ((b, size, size), np.float32),
            "panoptic_semantic": ((b, size, size), np.int32),
            "panoptic_instance": ((b, size, size), np.int32),
            "gray": ((b, size, size, 1), np.uint8)}


def abstract_batch(spec: Mapping[str, tuple[tuple, Any]], mesh: Any) -> dict[str, Any]:
    """ShapeDtypeStructs of `spec`, split along the batch axis of `mesh`."""
    import jax

    from fsq_jax.train import sharding

    data = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=data)
            for k, (shape, dtype) in spec.items()}


class _AbstractFrozenInit:
    """`init_state` of a stage-II task whose frozen stage is only shapes: inside the traced
    init the stage-I variables become traced zeros (no memory), so `jnp.asarray` works on them.
    """

    def __init__(self, task: Any, frozen_config: Any, group: str, variables: Any):
        self.task, self.frozen_config = task, frozen_config
        self.group, self.variables = group, variables

    def init_state(self, rng: Any, batch: Any) -> Any:
        import jax
        import jax.numpy as jnp

        from fsq_jax.train import frozen_from_variables

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.variables)
        self.task.frozen = frozen_from_variables(self.frozen_config, self.group, zeros)
        return self.task.init_state(rng, batch)


def _perceptual_stub(config: Any, directory: str) -> None:
    """A zero-filled ResNet-50 `.npz` (torchvision names) when the config wants the perceptual
    network but names no weights: its params count in the state as the real ones would."""
    loss = config.get("loss")
    if loss is None or loss.get("perceptual_network") != "resnet50" or loss.perceptual_weights:
        return
    import numpy as np

    from maskgit import losses

    path = os.path.join(directory, "resnet50_zeros.npz")
    shapes = losses.resnet50_shapes(with_head=bool(loss.perceptual_on_logits))
    np.savez(path, **{name: np.zeros(shape, np.float32) for name, shape in shapes.items()})
    loss.perceptual_weights = path


def build_planned_task(config: Any, frozen_config: Any | None, rng: Any, batch: Any,
                       workdir: str) -> tuple[Any, Any]:
    """(task, object whose `init_state` builds its state) of a config, frozen stage abstract.

    Stage II (a task with `frozen_stage_field`) needs `frozen_config`, the stage-I config; its
    variables are `jax.eval_shape` of that stage's `init_state`.
    """
    import jax

    from fsq_jax.config_lib import check
    from fsq_jax.train import frozen_from_variables
    from fsq_jax.train.validate import resolve_task, schema_of

    task_cls = resolve_task(config)
    if config.get("stage2") is not None and not config.stage2.get("encoder_init", "x"):
        # The pre-trained encoder's file is the user's; a 0.1 learning-rate multiplier without it
        # is refused. The optimiser state has the same size either way.
        config.stage2.encoder_lr_multiplier = 1.0
    _perceptual_stub(config, workdir)
    typed = check(config, schema_of(task_cls), "config")
    field = getattr(task_cls, "frozen_stage_field", None)
    if not field:
        task = task_cls(config)
        return task, task
    if frozen_config is None:
        raise ValueError(f"{config.task} trains on a frozen stage: give --frozen-config")
    task_cls.check_frozen(typed, frozen_config)
    _perceptual_stub(frozen_config, workdir)
    stage1 = resolve_task(frozen_config)(frozen_config)
    abstract1 = jax.eval_shape(stage1.init_state, rng, batch)
    group = "model" if "model" in abstract1.params and len(abstract1.params) == 1 else "generator"
    variables = {"params": abstract1.params[group], **abstract1.model_state}
    variables.pop("perceptual", None)
    variables.pop("lecam", None)
    task = task_cls(config, frozen=frozen_from_variables(frozen_config, group, variables))
    return task, _AbstractFrozenInit(task, frozen_config, group, variables)


# ----------------------------------------------------------------------------------------------
# Reading the compiled program.


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return int(total)


def _shape_text(shape: Any, index: Sequence[int] = ()) -> str:
    """'f32[4,512,512,256]' of an xla ShapeProto (the tuple element at `index`)."""
    from tensorflow.compiler.xla import xla_data_pb2

    for i in index:
        if i < len(shape.tuple_shapes):
            shape = shape.tuple_shapes[i]
    if shape.tuple_shapes:
        return "(" + ", ".join(_shape_text(s) for s in shape.tuple_shapes) + ")"
    dtype = xla_data_pb2.PrimitiveType.Name(shape.element_type).lower()
    return f"{dtype}[{','.join(str(d) for d in shape.dimensions)}]"


def largest_buffers(compiled: Any, top: int) -> list[dict[str, Any]]:
    """The `top` largest buffers XLA allocates for the step besides its inputs: each with its
    per-device bytes, shape, the JAX name stack of the op that defines it (`op_name`) and the
    HLO instruction. Read from XLA's buffer assignment (needs TensorFlow's XLA protos, which
    the pinned tensorflow-cpu carries); [] when they are not importable."""
    try:
        from tensorflow.compiler.xla.service import hlo_pb2
    except ImportError:
        return []
    stats = compiled.memory_analysis()
    assignment = hlo_pb2.BufferAssignmentProto.FromString(stats.serialized_buffer_assignment_proto)
    module = hlo_pb2.HloModuleProto.FromString(
        compiled.runtime_executable().hlo_modules()[0].as_serialized_hlo_module_proto())
    instructions = {ins.id: ins for comp in module.computations for ins in comp.instructions}
    logical = {buf.id: buf for buf in assignment.logical_buffers}
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for allocation in assignment.buffer_allocations:
        if (allocation.is_entry_computation_parameter or allocation.is_constant
                or allocation.is_thread_local):
            continue
        kind = "output" if allocation.maybe_live_out else "temp"
        for assigned in allocation.assigned:
            buf = logical.get(assigned.logical_buffer_id)
            ins = instructions.get(buf.defined_at.instruction_id) if buf is not None else None
            if ins is None or ins.opcode in ("tuple", "get-tuple-element", "bitcast"):
                continue
            shape = _shape_text(ins.shape, buf.defined_at.shape_index)
            op_name = ins.metadata.op_name or ins.name
            key = (shape, op_name)
            if key in seen:
                seen[key]["count"] += 1
                continue
            seen[key] = {"bytes": int(buf.size), "shape": shape, "op_name": op_name,
                         "instruction": ins.name, "kind": kind, "count": 1}
    return sorted(seen.values(), key=lambda b: -b["bytes"])[:top]


@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes of one compiled train step (see `plan`)."""

    config: str
    devices: int
    per_device_batch: int
    global_batch: int
    fsdp: bool
    remat: str
    params_bytes: int
    opt_state_bytes: int
    ema_bytes: int
    model_state_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    per_device_peak_bytes: int
    compile_seconds: float
    flops_per_device: float  # XLA's count for one step of the per-device program (0: unknown)
    largest_buffers: list[dict[str, Any]]

    def fits(self, device_bytes: float) -> bool:
        return self.per_device_peak_bytes <= device_bytes

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan(config: Any, per_device_batch: int, mesh: Any, *, frozen_config: Any | None = None,
         fsdp: bool | None = None, top: int = 10, name: str = "") -> MemoryPlan:
    """Compiles the loop's train step of `config` on `mesh` for `per_device_batch` examples per
    device and returns its per-device memory.

    Peak = arguments + outputs - donated (aliased) + temporaries: XLA holds the inputs, the
    outputs not written in place and its one temporary arena (activations kept for the backward
    pass, gradients, scratch) at once.
    """
    import jax

    from fsq_jax.train import sharding
    from fsq_jax.train.loop import CompiledSteps, abstract_state

    devices = int(mesh.devices.size)
    global_batch = per_device_batch * devices
    config = config.copy_and_resolve_references()
    config.batch_size = global_batch
    fsdp = bool(config.fsdp) if fsdp is None else fsdp
    rng = jax.random.key(0)
    with tempfile.TemporaryDirectory() as workdir:
        if frozen_config is not None:
            frozen_config = frozen_config.copy_and_resolve_references()
        images = abstract_batch(batch_spec(config, global_batch), mesh)
        task, initializer = build_planned_task(config, frozen_config, rng, images, workdir)
        batch = abstract_batch(batch_spec(config, global_batch, task), mesh)
        state, shardings = abstract_state(initializer, rng, batch, mesh, fsdp)
    steps = CompiledSteps(task, shardings, mesh)
    rng_spec = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=sharding.replicated(mesh))
    start = time.perf_counter()
    compiled = steps.train.lower(state, batch, rng_spec).compile()
    compile_seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    remat = planned_remat(config)
    return MemoryPlan(
        config=name, devices=devices, per_device_batch=per_device_batch,
        global_batch=global_batch, fsdp=fsdp, remat=remat,
        params_bytes=shard_bytes(state.params), opt_state_bytes=shard_bytes(state.opt_state),
        ema_bytes=shard_bytes(state.ema_params), model_state_bytes=shard_bytes(state.model_state),
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes), alias_bytes=int(stats.alias_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        generated_code_bytes=int(stats.generated_code_size_in_bytes),
        per_device_peak_bytes=int(peak), compile_seconds=compile_seconds,
        flops_per_device=xla_flops(compiled), largest_buffers=largest_buffers(compiled, top))


def xla_flops(compiled: Any) -> float:
    """XLA's FLOP count of one call of a compiled program (per device), 0 when unavailable."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # best effort: not every backend counts
        return 0.0
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    return float((analysis or {}).get("flops", 0.0))


# ----------------------------------------------------------------------------------------------
# Command line.

# Usable memory of the cards the table is for (what nvidia-smi reports in total: H100 / A100
# 80 GB: 81,559 MiB; A100 40 GB: 40,960 MiB); a plan "fits" below HEADROOM of it.
CARDS_GIB = {"80GB": 81_559 / 1024, "40GB": 40_960 / 1024}
HEADROOM = 0.9


def fits(peak_bytes: int, card_gib: float) -> bool:
    """Whether a per-device peak fits a card with `HEADROOM` of its memory (the rest: the CUDA
    context, cuDNN workspaces, fragmentation, fusion differences from XLA:CPU's plan)."""
    return peak_bytes <= HEADROOM * card_gib * GIB


def report(result: MemoryPlan) -> str:
    """The plan as a short human-readable table (GiB per device)."""
    g = lambda n: f"{n / GIB:9.3f}"
    lines = [
        f"{result.config}: {result.devices} devices x {result.per_device_batch} examples "
        f"(global batch {result.global_batch}), remat {result.remat}, "
        f"fsdp {'on' if result.fsdp else 'off'}; compiled in {result.compile_seconds:.0f} s",
        "per device                                        GiB",
        f"  parameters                               {g(result.params_bytes)}",
        f"  optimiser state                          {g(result.opt_state_bytes)}",
        f"  EMA parameters                           {g(result.ema_bytes)}",
        f"  frozen / non-trained model state         {g(result.model_state_bytes)}",
        f"  arguments (state + batch)                {g(result.argument_bytes)}",
        f"  outputs                                  {g(result.output_bytes)}",
        f"  donated (outputs written in place)       {g(-result.alias_bytes)}",
        f"  temporaries (activations, grads, scratch){g(result.temp_bytes)}",
        f"  peak                                     {g(result.per_device_peak_bytes)}",
        f"XLA's count: {result.flops_per_device / 1e12:.2f} TFLOP per device and step",
        "fits (" + ", ".join(
            f"{card}: {'yes' if fits(result.per_device_peak_bytes, gib) else 'NO'}"
            for card, gib in CARDS_GIB.items()) + f"; at {HEADROOM:.0%} of the card)",
        "largest buffers (per device):"]
    for buf in result.largest_buffers:
        count = f" x{buf['count']}" if buf["count"] > 1 else ""
        lines.append(f"  {buf['bytes'] / GIB:8.3f} GiB  {buf['shape']}{count}  {buf['kind']}  "
                     f"{buf['op_name']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True,
                        help="config file and presets, e.g. configs/uvim/depth.py:fsq,paper")
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices of the mesh")
    parser.add_argument("--per-device-batch", type=int, default=0,
                        help="examples per device (0: the config's batch_size / devices)")
    parser.add_argument("--remat", default="",
                        help="sets the trained model's remat field (model.remat, stage2.remat)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override, e.g. --set model.dtype=bfloat16 (repeatable)")
    parser.add_argument("--frozen-config", default="",
                        help="stage II: the stage-I config (default: derived from --config)")
    parser.add_argument("--fsdp", choices=("config", "on", "off"), default="config")
    parser.add_argument("--top", type=int, default=10, help="largest buffers listed")
    parser.add_argument("--json", default="", help="also write the plan as JSON here")
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be >= 1")
    force_host_devices(args.devices)

    import jax

    from fsq_jax.train import sharding

    if len(jax.devices()) < args.devices:
        sys.exit(f"--devices {args.devices}: JAX shows only {len(jax.devices())} devices (it was "
                 "initialised before this script could set XLA_FLAGS)")
    from fsq_jax.train.validate import resolve_task

    try:
        config = load_config(args.config, args.set, args.remat)
        frozen = None
        if getattr(resolve_task(config), "frozen_stage_field", None):
            frozen_spec = args.frozen_config or stage1_spec(args.config)
            if not frozen_spec:
                sys.exit(f"{args.config}: trains on a frozen stage; give --frozen-config")
            frozen = load_config(frozen_spec)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"{args.config}: {error}")
    per_device = args.per_device_batch or config.batch_size // args.devices
    if per_device < 1:
        sys.exit(f"--per-device-batch: the config's batch_size {config.batch_size} is smaller "
                 f"than --devices {args.devices}; give --per-device-batch")
    mesh = sharding.create_mesh(jax.devices()[:args.devices])
    fsdp = None if args.fsdp == "config" else args.fsdp == "on"
    result = plan(config, per_device, mesh, frozen_config=frozen, fsdp=fsdp, top=args.top,
                  name=args.config)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
