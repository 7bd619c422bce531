"""big_vision's Adafactor variant and its optimiser chain, composed from optax transforms.

UViM trains both stages with `big_vision.scale_by_adafactor` inside big_vision's own optimiser
construction; its update differs from `optax.adafactor` (beta2 cap, factoring threshold, momentum,
no parameter scaling, weight decay scheduled and not scaled by the learning rate), so reproducing
UViM needs this chain. Source: google-research/big_vision, big_vision/optax.py (`make`,
`scale_by_adafactor`) and big_vision/utils.py (`create_learning_rate_schedule`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

# big_vision/optax.py scale_by_adafactor: eps=1e-30, added to the squared gradient.
EPSILON = 1e-30
MOMENTUM_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


def scale_by_adafactor(
    *,
    min_dim_size_to_factor: int = 32,
    decay_rate: float = 0.8,
    beta2_cap: float = 0.999,
    clipping_threshold: float = 0.0,
    momentum: float = 0.9,
    momentum_dtype: str = "bfloat16",
) -> optax.GradientTransformation:
    """big_vision's `scale_by_adafactor` (defaults are its defaults; 0 disables clip/momentum).

    Factored second moments (the two largest axes of a leaf, if the smaller is at least
    `min_dim_size_to_factor`) with beta2_t = min(beta2_cap, 1 - (t + 1)^-decay_rate), then
    optional block-RMS clipping, then a non-debiased EMA momentum kept in `momentum_dtype`.
    """

    def beta2(step: jax.Array, exponent: float) -> jax.Array:
        t = jnp.asarray(step, jnp.float32) + 1.0
        return jnp.minimum(beta2_cap, 1.0 - t ** (-exponent))

    return optax.chain(
        optax.scale_by_factored_rms(
            factored=True, decay_rate=decay_rate, step_offset=0,
            min_dim_size_to_factor=min_dim_size_to_factor, epsilon=EPSILON,
            decay_rate_fn=beta2),
        optax.clip_by_block_rms(clipping_threshold) if clipping_threshold > 0
        else optax.identity(),
        optax.ema(momentum, debias=False, accumulator_dtype=MOMENTUM_DTYPES[momentum_dtype])
        if momentum > 0 else optax.identity(),
    )


def path_name(path: tuple[Any, ...]) -> str:
    """A pytree key path as big_vision names params: dict keys joined by '/' ("a/b/kernel")."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def name_mask(pattern: str) -> Callable[[Any], Any]:
    """A mask function: True for leaves whose `path_name` fully matches the regex `pattern`.

    big_vision's `wd_mults` default `(".*/kernel$", 1.0)` decays kernels only (optax.py `make`).
    """
    regex = re.compile(pattern)

    def mask(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: regex.fullmatch(path_name(path)) is not None, params)

    return mask


def big_vision_adafactor(
    *,
    learning_rate: float,
    schedule: optax.Schedule,
    weight_decay: float = 0.0,
    weight_decay_pattern: str = ".*/kernel$",
    **adafactor: Any,
) -> optax.GradientTransformation:
    """The update big_vision's `make` builds around `scale_by_adafactor` (clipping excluded).

    update_t = -schedule(t) * (learning_rate * adafactor(g)_t + weight_decay * mask * param),
    so weight decay follows the schedule but is not multiplied by the learning rate.

    Args:
      learning_rate: big_vision's `config.lr`, the peak rate.
      schedule: the schedule normalised to peak 1 (big_vision's `schedule` with base 1.0).
      weight_decay: big_vision's `config.wd` (0 disables).
      weight_decay_pattern: regex of the decayed param names (`name_mask`).
      **adafactor: `scale_by_adafactor` arguments.
    """
    decay = (optax.add_decayed_weights(weight_decay, name_mask(weight_decay_pattern))
             if weight_decay > 0 else optax.identity())
    return optax.chain(
        scale_by_adafactor(**adafactor),
        optax.scale(learning_rate),
        decay,
        optax.scale_by_schedule(schedule),
        optax.scale(-1.0),
    )
