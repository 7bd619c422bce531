"""Optax optimisers and learning-rate schedules built from a config.

Every task names its optimiser(s) in config, so switching Adam for Lion or cosine for linear decay
is a command-line override; `build` checks the fields and says which one is wrong.
"""

from __future__ import annotations

import re

import ml_collections
import optax

from fsq_jax.train import big_vision_optax

# "adafactor" is optax's; "big_vision_adafactor" is UViM's (big_vision/optax.py), see
# fsq_jax/train/big_vision_optax.py.
OPTIMIZERS = ("adam", "adamw", "sgd", "lion", "adafactor", "big_vision_adafactor")
SCHEDULES = ("constant", "cosine", "linear")


def default_config() -> ml_collections.ConfigDict:
    """Every optimiser field with its default (AdamW-style, constant rate, no clipping)."""
    return ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 1e-4,
            "schedule": "constant",  # constant | cosine | linear (decay to end_learning_rate)
            "warmup_steps": 0,
            "end_learning_rate": 0.0,  # final rate for cosine / linear, absolute value
            "b1": 0.9,
            "b2": 0.99,
            "eps": 1e-8,
            "momentum": 0.9,  # sgd and big_vision_adafactor (0 disables)
            "weight_decay": 0.0,  # decoupled, for adamw / lion / sgd / (big_vision_)adafactor
            # Regex (re.fullmatch) on '/'-joined param names that weight decay applies to; ".*" =
            # every param. big_vision decays kernels only: ".*/kernel$".
            "weight_decay_pattern": ".*",
            "grad_clip_norm": 0.0,  # 0 disables clipping by global norm
            # big_vision_adafactor only (defaults: big_vision/optax.py scale_by_adafactor):
            "beta2_cap": 0.999,  # beta2_t = min(beta2_cap, 1 - (t + 1)^-beta2_exponent)
            "beta2_exponent": 0.8,  # big_vision's decay_rate
            "min_dim_size_to_factor": 32,  # factor a leaf's 2nd moment if 2 dims are this big
            "clipping_threshold": 0.0,  # block-RMS update clipping; 0 disables (big_vision None)
            "momentum_dtype": "bfloat16",  # accumulator of the momentum: bfloat16 | float32
        }
    )


def _check(config: ml_collections.ConfigDict, total_steps: int) -> None:
    def fail(field: str, message: str) -> None:
        raise ValueError(f"optimizer.{field} = {config.get(field)!r}: {message}")

    unknown = sorted(set(config.keys()) - set(default_config().keys()))
    if unknown:
        raise ValueError(
            f"optimizer.{unknown[0]}: unknown field; allowed: {sorted(default_config().keys())}"
        )
    if config.name not in OPTIMIZERS:
        fail("name", f"must be one of {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        fail("schedule", f"must be one of {', '.join(SCHEDULES)}")
    if not config.learning_rate > 0:
        fail("learning_rate", "must be > 0")
    if config.warmup_steps < 0:
        fail("warmup_steps", "must be >= 0")
    if config.schedule != "constant" and config.warmup_steps >= max(total_steps, 1):
        fail("warmup_steps", f"must be < total_steps ({total_steps}) for a decaying schedule")
    for field in ("b1", "b2"):
        if not 0.0 <= config[field] < 1.0:
            fail(field, "must be in [0, 1)")
    if config.weight_decay < 0:
        fail("weight_decay", "must be >= 0")
    if config.grad_clip_norm < 0:
        fail("grad_clip_norm", "must be >= 0 (0 disables clipping)")
    if config.end_learning_rate < 0:
        fail("end_learning_rate", "must be >= 0")
    try:
        re.compile(config.weight_decay_pattern)
    except re.error as error:
        fail("weight_decay_pattern", f"not a regular expression ({error})")
    if not 0.0 < config.beta2_cap <= 1.0:
        fail("beta2_cap", "must be in (0, 1]")
    if not config.beta2_exponent > 0:
        fail("beta2_exponent", "must be > 0")
    if not 0.0 <= config.momentum < 1.0:
        fail("momentum", "must be in [0, 1)")
    if config.min_dim_size_to_factor < 1:
        fail("min_dim_size_to_factor", "must be >= 1")
    if config.clipping_threshold < 0:
        fail("clipping_threshold", "must be >= 0 (0 disables clipping)")
    if config.momentum_dtype not in big_vision_optax.MOMENTUM_DTYPES:
        fail("momentum_dtype", f"must be one of {', '.join(big_vision_optax.MOMENTUM_DTYPES)}")


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule: linear warmup, then constant, cosine or linear decay."""
    peak = float(config.learning_rate)
    warmup = int(config.warmup_steps)
    end = float(config.end_learning_rate)
    decay_steps = max(int(total_steps) - warmup, 1)
    if config.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak)
    else:
        main = optax.linear_schedule(peak, end, decay_steps)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def build(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Builds the optimiser (with its schedule and optional clipping) from `config`.

    Args:
      config: see `default_config()`; missing fields take their defaults.
      total_steps: training length, the horizon of decaying schedules.
    """
    full = default_config()
    unknown = sorted(set(config.keys()) - set(full.keys()))
    if unknown:
        raise ValueError(f"optimizer.{unknown[0]}: unknown field; allowed: {sorted(full.keys())}")
    full.update(dict(config))
    config = full
    _check(config, total_steps)
    lr = schedule(config, total_steps)
    mask = (None if config.weight_decay_pattern == ".*"
            else big_vision_optax.name_mask(config.weight_decay_pattern))
    if config.name == "adam":
        tx = optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
        if config.weight_decay > 0:
            raise ValueError(
                "optimizer.weight_decay > 0 needs name='adamw' (decoupled decay); got 'adam'"
            )
    elif config.name == "adamw":
        tx = optax.adamw(
            lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
            mask=mask,
        )
    elif config.name == "lion":
        tx = optax.lion(lr, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                        mask=mask)
    elif config.name == "adafactor":
        tx = optax.adafactor(lr, weight_decay_rate=config.weight_decay or None,
                             weight_decay_mask=mask)
    elif config.name == "big_vision_adafactor":
        peak = float(config.learning_rate)
        tx = big_vision_optax.big_vision_adafactor(
            learning_rate=peak, schedule=lambda count: lr(count) / peak,
            weight_decay=float(config.weight_decay),
            weight_decay_pattern=config.weight_decay_pattern,
            min_dim_size_to_factor=int(config.min_dim_size_to_factor),
            decay_rate=float(config.beta2_exponent), beta2_cap=float(config.beta2_cap),
            clipping_threshold=float(config.clipping_threshold),
            momentum=float(config.momentum), momentum_dtype=config.momentum_dtype,
        )
    else:
        tx = optax.sgd(lr, momentum=config.momentum or None)
        if config.weight_decay > 0:
            tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask), tx)
    if config.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx
