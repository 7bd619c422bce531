"""The training state every task returns: parameter groups, their optimisers, EMA and model state.

Tasks with several optimisers (generator + discriminator) keep one parameter group per optimiser,
so one `TrainState` type serves every pipeline and the loop can shard, checkpoint and guard it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class OptimizerGroups(Mapping):
    """An immutable, hashable `{group name: optax.GradientTransformation}` mapping.

    `TrainState.tx` is a static (non-pytree) field, so it must be hashable for `jax.jit`;
    it reads like a plain dict.
    """

    def __init__(self, transforms: Mapping[str, optax.GradientTransformation]):
        self._items = tuple(sorted(dict(transforms).items()))
        for name, tx in self._items:
            if not isinstance(name, str):
                raise TypeError(f"optimiser group names must be str, got {name!r}")
            if not hasattr(tx, "init") or not hasattr(tx, "update"):
                raise TypeError(
                    f"tx[{name!r}] must be an optax.GradientTransformation, got {type(tx).__name__}"
                )

    def __getitem__(self, key: str) -> optax.GradientTransformation:
        for name, tx in self._items:
            if name == key:
                return tx
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OptimizerGroups) and self._items == other._items

    def __repr__(self) -> str:
        return f"OptimizerGroups({list(self)})"


class TrainState(flax.struct.PyTreeNode):
    """Step, parameter groups, optimiser states, EMA params and non-trained model state.

    Attributes:
      step: int32 scalar, number of updates applied.
      params: `{group: params pytree}`, e.g. `{"generator": ..., "discriminator": ...}`.
      opt_state: `{group: optax state}`, same keys as `params`.
      ema_params: `{group: params pytree}` when `ema_decay > 0`, else `{}`.
      model_state: non-trained Flax collections, e.g. `{"quantizer_state": ...}`.
      grad_norms: `{group: global norm of the last gradients applied to it}`, for logging
        (not checkpointed).
      tx: static `{group: optax.GradientTransformation}`.
      ema_decay: static EMA decay (0 disables the EMA).
    """

    step: jax.Array
    params: dict[str, Any]
    opt_state: dict[str, Any]
    ema_params: dict[str, Any]
    model_state: dict[str, Any]
    grad_norms: dict[str, jax.Array]
    tx: OptimizerGroups = flax.struct.field(pytree_node=False)
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(
        cls,
        params: Mapping[str, Any],
        tx: Mapping[str, optax.GradientTransformation] | optax.GradientTransformation,
        model_state: Mapping[str, Any] | None = None,
        ema_decay: float = 0.0,
    ) -> TrainState:
        """Initialises optimiser states (and EMA) for every parameter group.

        Args:
          params: `{group: params}`; every group needs an optimiser in `tx`.
          tx: `{group: optax transformation}`, or one transformation used for a single group.
          model_state: non-trained collections (default: empty).
          ema_decay: in [0, 1); 0 disables the EMA.
        """
        params = dict(params)
        if not params:
            raise ValueError("TrainState.create: params must hold at least one parameter group")
        if not isinstance(tx, Mapping):
            if len(params) != 1:
                raise ValueError(
                    "TrainState.create: a single optimiser needs a single parameter group, got "
                    f"groups {sorted(params)}; pass tx as a dict with one optimiser per group"
                )
            tx = {next(iter(params)): tx}
        tx = OptimizerGroups(tx)
        missing = sorted(set(params) - set(tx))
        extra = sorted(set(tx) - set(params))
        if missing or extra:
            raise ValueError(
                f"TrainState.create: optimiser groups {sorted(tx)} must match parameter groups "
                f"{sorted(params)} (missing optimisers: {missing}, "
                f"optimisers without params: {extra})"
            )
        ema_decay = float(ema_decay)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"TrainState.create: ema_decay must be in [0, 1), got {ema_decay}")
        opt_state = {name: tx[name].init(group) for name, group in params.items()}
        ema_params = jax.tree.map(jnp.copy, params) if ema_decay > 0.0 else {}
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            ema_params=ema_params,
            model_state=dict(model_state or {}),
            grad_norms={name: jnp.zeros((), jnp.float32) for name in params},
            tx=tx,
            ema_decay=ema_decay,
        )

    def apply_gradients(
        self, grads: Mapping[str, Any], model_state: Mapping[str, Any] | None = None
    ) -> TrainState:
        """Applies `grads` to the groups it names (and their EMA); increments `step`.

        Groups absent from `grads` are left unchanged, so a GAN step can update the generator
        and the discriminator in separate calls or together. `model_state`, when given,
        replaces the stored non-trained collections.
        """
        unknown = sorted(set(grads) - set(self.params))
        if unknown:
            raise KeyError(
                f"apply_gradients: gradient groups {unknown} not in parameter groups "
                f"{sorted(self.params)}"
            )
        params = dict(self.params)
        opt_state = dict(self.opt_state)
        ema_params = dict(self.ema_params)
        grad_norms = dict(self.grad_norms)
        decay = self.ema_decay

        def ema_update(ema: jax.Array, new: jax.Array) -> jax.Array:
            return (decay * ema + (1.0 - decay) * new).astype(ema.dtype)

        for name, group_grads in grads.items():
            updates, opt_state[name] = self.tx[name].update(
                group_grads, self.opt_state[name], self.params[name]
            )
            params[name] = optax.apply_updates(self.params[name], updates)
            grad_norms[name] = optax.global_norm(group_grads).astype(jnp.float32)
            if self.ema_decay > 0.0:
                ema_params[name] = jax.tree.map(ema_update, self.ema_params[name], params[name])
        return self.replace(
            step=self.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_params,
            model_state=self.model_state if model_state is None else dict(model_state),
            grad_norms=grad_norms,
        )

    def eval_params(self) -> dict[str, Any]:
        """EMA params where kept, else the raw params: what evaluation should use."""
        return self.ema_params if self.ema_params else self.params
