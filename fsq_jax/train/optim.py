"""Optax optimisers and learning-rate schedules built from an `optimizer` config section.

Every task names its optimiser(s) in config (`fsq_jax.config_lib.OptimizerConfig` lists the
fields, their defaults and their checks), so switching Adam for Lion or cosine for linear decay is
a command-line override. "adafactor" is optax's; "big_vision_adafactor" is UViM's
(fsq_jax/train/big_vision_optax.py).
"""

from __future__ import annotations

from typing import Any

import optax

from fsq_jax.train import big_vision_optax


def warmup_steps(config: Any, total_steps: int) -> int:
    """The warm-up length: `config.warmup_steps`, shortened to 10% of a run that is not longer
    than it (so `--config.total_steps=N` alone shortens any preset; validation logs it)."""
    warmup = int(config.warmup_steps)
    return warmup if warmup < total_steps else int(total_steps) // 10


def schedule(config: Any, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule: linear warmup, then constant, cosine or linear decay."""
    peak = float(config.learning_rate)
    warmup = warmup_steps(config, total_steps)
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


def build(config: Any, total_steps: int) -> optax.GradientTransformation:
    """The optimiser of a (validated) `optimizer` section, with its schedule and clipping.

    Args:
      config: an optimizer section (`fsq_jax.config_lib.optimizer()` gives the defaults).
      total_steps: training length, the horizon of decaying schedules.
    """
    lr = schedule(config, total_steps)
    mask = (None if config.weight_decay_pattern == ".*"
            else big_vision_optax.name_mask(config.weight_decay_pattern))
    if config.name == "adam":
        tx = optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
    elif config.name == "adamw":
        tx = optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                         weight_decay=config.weight_decay, mask=mask)
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
            momentum=float(config.momentum), momentum_dtype=config.momentum_dtype)
    elif config.name == "sgd":
        tx = optax.sgd(lr, momentum=config.momentum or None)
        if config.weight_decay > 0:
            tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask), tx)
    else:
        raise ValueError(f"optimizer.name = {config.name!r}: not an optimiser of this module")
    if config.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx
