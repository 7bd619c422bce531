"""UViM's two training stages as tasks of the shared fsq_jax training loop.

`Stage1Task` trains the oracle autoencoder of a dense task's output; `Stage2Task` freezes a
trained stage-I model and trains the language model that predicts its code from the image. Both
supply pure train/eval steps, evaluators (task metric and codebook usage) and image grids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fsq_jax import codebook, quantizers
from fsq_jax import images as image_lib
from fsq_jax.eval.codebook_report import CodeCounter
from fsq_jax.quantizers import RNG_STREAM, STATE_COLLECTION
from fsq_jax.train import TrainState, npz_init, optim
from fsq_jax.train import default_config as loop_default_config
from uvim import stage1, stage2, vit_checkpoint
from uvim.tasks import DENSE_TASKS, build_dense_task
from uvim.tasks import colorization as colorization_task
from uvim.tasks import depth as depth_task
from uvim.tasks import panoptic as panoptic_task

Batch = Mapping[str, jax.Array]
BatchesFn = Callable[[], Iterable[Mapping[str, np.ndarray]]]

_DENSE_DEFAULTS = {
    "depth": depth_task.default_config,
    "colorization": colorization_task.default_config,
    "panoptic": panoptic_task.default_config,
}
_IMAGE_ROWS = 8  # examples shown in an image grid


def reference_config(dense_name: str) -> ml_collections.ConfigDict:
    """Every field a UViM config may hold, with its type (for the loop's unknown-key check)."""
    if dense_name not in DENSE_TASKS:
        raise ValueError(f"dense_task.name must be one of {sorted(DENSE_TASKS)}, "
                         f"got {dense_name!r}")
    config = loop_default_config()
    config.dense_task = _DENSE_DEFAULTS[dense_name]()
    config.model = stage1.default_config()
    config.stage2 = stage2.default_config()
    config.stage2.encoder_lr_multiplier = 1.0
    config.stage2.encoder_init = ""
    config.quantizer = quantizers.default_config()
    config.optimizer = optim.default_config()
    config.stage1_workdir = ""
    config.evaluators = ml_collections.ConfigDict({"num_batches": 8})
    return config


def _check_common(config: ml_collections.ConfigDict, input_size: int, field: str) -> None:
    image_size = config.data.get("image_size", input_size)
    if image_size != input_size:
        raise ValueError(f"{field} ({input_size}) must equal data.image_size ({image_size})")
    if config.evaluators.num_batches < 0:
        raise ValueError(f"evaluators.num_batches must be >= 0, got "
                         f"{config.evaluators.num_batches}")


def _evaluation_batches(config: ml_collections.ConfigDict) -> Iterator[Mapping[str, np.ndarray]]:
    """`evaluators.num_batches` validation batches of `eval_batch_size` from `fsq_jax.data`."""
    from fsq_jax import data

    iterator = iter(data.build(config.data, "validation", config.eval_batch_size))
    for _ in range(config.evaluators.num_batches):
        yield next(iterator)


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(tree))


def image_grid(columns: Sequence[np.ndarray], min_size: int = 128) -> np.ndarray:
    """Columns of uint8 [B, H, W, 3] images -> one uint8 grid [B*s*H, len(columns)*s*W, 3].

    Small images are enlarged by pixel repetition (factor s) to at least `min_size` pixels.
    """
    rows = [np.concatenate([np.asarray(c[i]) for c in columns], axis=1)
            for i in range(len(columns[0]))]
    grid = np.concatenate(rows, axis=0)
    scale = max(1, min_size // max(columns[0].shape[1], 1))
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def _comparison_grid(dense: Any, batch: Batch, prediction: Any) -> np.ndarray:
    """Rows of input image | target | prediction, as the picture a person checks over training."""
    columns = [np.asarray(image_lib.to_uint8(dense.context(batch))),
               dense.visualize(_to_numpy(dense.ground_truth(batch))),
               dense.visualize(_to_numpy(prediction))]
    return image_grid(columns)


def _usage_metrics(counter: CodeCounter, prefix: str) -> dict[str, float]:
    """`<prefix>usage` and `<prefix>perplexity` of the codes counted over an evaluation."""
    return {f"{prefix}usage": codebook.usage(counter.counts),
            f"{prefix}perplexity": codebook.perplexity(counter.counts)}


class Stage1Task:
    """UViM stage I: autoencode the task output through the quantizer, with image context.

    Parameter group "model"; the quantizer's state (VQ EMA, usage) lives in `model_state`.
    """

    def __init__(self, config: ml_collections.ConfigDict, *,
                 batches_fn: BatchesFn | None = None):
        self.config = config
        self.dense = build_dense_task(config.dense_task)
        self.model = stage1.build(config.model, config.quantizer, self.dense.target_channels())
        self.codebook_size = quantizers.codebook_size(config.quantizer)
        self.batches_fn = batches_fn or (lambda: _evaluation_batches(config))
        self._reconstruct = jax.jit(self._reconstruct_fn)

    # Hooks the loop calls before compiling anything.
    def reference_config(self) -> ml_collections.ConfigDict:
        return reference_config(self.config.dense_task.name)

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        stage1.check_config(config.model)
        _check_common(config, config.model.input_size, "model.input_size")

    def _variables(self, params: Any, model_state: Mapping[str, Any]) -> dict[str, Any]:
        return {"params": params, **model_state}

    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
        rngs = dict(zip(("params", "dropout", RNG_STREAM), jax.random.split(rng, 3)))
        variables = dict(self.model.init(rngs, self.dense.targets(batch),
                                         self.dense.context(batch), train=False))
        params = variables.pop("params")
        tx = optim.build(self.config.optimizer, self.config.total_steps)
        return TrainState.create({"model": params}, {"model": tx}, model_state=variables,
                                 ema_decay=self.config.ema_decay)

    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        dropout_rng, quantizer_rng = jax.random.split(rng)
        targets, context = self.dense.targets(batch), self.dense.context(batch)

        def loss_fn(params):
            (logits, out), mutated = self.model.apply(
                self._variables(params, state.model_state), targets, context, train=True,
                rngs={"dropout": dropout_rng, RNG_STREAM: quantizer_rng},
                mutable=[STATE_COLLECTION])
            loss, metrics = self.dense.loss(logits, batch)
            return loss + out.loss, (loss, metrics, out, mutated)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (total, (loss, metrics, out, mutated)), grads = grad_fn(state.params["model"])
        state = state.apply_gradients({"model": grads},
                                      model_state={**state.model_state, **mutated})
        return state, {
            "loss": total, "task_loss": loss, "quantizer_loss": out.loss, **metrics,
            **{f"quantizer_{k}": v for k, v in out.metrics.items()},
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(state.params["model"]),
        }

    def _reconstruct_fn(self, params: Any, model_state: Any, batch: Batch
                        ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], Any]:
        logits, out = self.model.apply(self._variables(params, model_state),
                                       self.dense.targets(batch), self.dense.context(batch),
                                       train=False)
        return logits, self.dense.predict(logits), out

    def eval_step(self, state: TrainState, batch: Batch, rng: jax.Array
                  ) -> dict[str, jax.Array]:
        del rng
        logits, prediction, out = self._reconstruct_fn(state.eval_params()["model"],
                                                       state.model_state, batch)
        loss, metrics = self.dense.loss(logits, batch)
        used = jnp.zeros(self.codebook_size, jnp.int32).at[out.indices.reshape(-1)].set(1)
        return {"loss": loss, **metrics, **self.dense.batch_metrics(prediction, batch),
                "codebook_usage_batch": jnp.mean(used.astype(jnp.float32))}

    def evaluators(self) -> list[OracleEvaluator]:
        return [OracleEvaluator(self)]

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]:
        del rng
        batch = jax.tree.map(lambda x: x[:_IMAGE_ROWS], batch)
        _, prediction, _ = self._reconstruct(state.eval_params()["model"], state.model_state,
                                             batch)
        return {"input_target_reconstruction": _comparison_grid(self.dense, batch, prediction)}


class OracleEvaluator:
    """Stage-I reconstruction quality (the "oracle" metric) and codebook usage on held-out data."""

    name = "oracle"

    def __init__(self, task: Stage1Task):
        self.task = task

    def run(self, state: TrainState) -> Iterator[tuple[str, float]]:
        task = self.task
        metric = task.dense.new_metric()
        usage = CodeCounter(task.codebook_size)
        params = state.eval_params()["model"]
        for batch in task.batches_fn():
            _, prediction, out = task._reconstruct(params, state.model_state, batch)
            metric.update(_to_numpy(prediction), batch)
            usage.update(np.asarray(out.indices))
        yield from metric.result().items()
        yield from _usage_metrics(usage, "codebook_").items()


def load_stage1(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Config and frozen variables (EMA params when kept) of a stage-I run in `workdir`."""
    from fsq_jax.train import restore_latest

    config, restored = restore_latest(workdir)
    params = restored["ema_params"] or restored["params"]
    if "model" not in params:
        raise ValueError(f"stage1_workdir {workdir!r} holds no stage-I model (parameter groups "
                         f"{sorted(params)})")
    return config, {"params": params["model"], **dict(restored.get("model_state") or {})}


def _split_encoder(params: Any) -> Any:
    """Labels "encoder" for the image-encoder params of Stage2Model, "decoder" otherwise."""
    encoder = ("embed_patches", "posemb_encoder", "encoder")
    return {k: jax.tree.map(lambda _, k=k: "encoder" if k in encoder else "decoder", v)
            for k, v in params.items()}


def stage2_optimizer(optimizer: ml_collections.ConfigDict, encoder_lr_multiplier: float,
                     total_steps: int) -> optax.GradientTransformation:
    """Stage II's optimiser: the encoder's learning rate times `encoder_lr_multiplier`.

    As big_vision's `lr_mults` (big_vision/optax.py make), the multiplier scales the learning
    rate (with `big_vision_adafactor`, not the weight decay) and gradients are clipped by the
    global norm of all parameters, before the encoder/decoder split.
    """
    if encoder_lr_multiplier == 1.0:
        return optim.build(optimizer, total_steps)
    unclipped = ml_collections.ConfigDict(optimizer.to_dict())
    unclipped.grad_clip_norm = 0.0
    decoder = optim.build(unclipped, total_steps)
    scaled = ml_collections.ConfigDict(unclipped.to_dict())
    scaled.learning_rate = optimizer.learning_rate * encoder_lr_multiplier
    scaled.end_learning_rate = optimizer.get("end_learning_rate", 0.0) * encoder_lr_multiplier
    encoder = optim.build(scaled, total_steps)
    split = optax.multi_transform({"encoder": encoder, "decoder": decoder}, _split_encoder)
    clip = float(optimizer.get("grad_clip_norm", 0.0))
    return optax.chain(optax.clip_by_global_norm(clip), split) if clip > 0 else split


class Stage2Task:
    """UViM stage II: predict the frozen stage-I code of the task output from the image.

    Parameter group "stage2"; the frozen stage-I variables ride along in
    `model_state["stage1"]`, so checkpoints are self-contained. A non-empty
    `stage2.encoder_init` names a ViT `.npz` the encoder starts from (`uvim.vit_checkpoint`).

    Args:
      config: the stage-II config (`stage1_workdir` names the trained stage-I run).
      stage1_run: `(stage-I config, stage-I variables)` to use instead of `stage1_workdir`.
    """

    def __init__(self, config: ml_collections.ConfigDict, *,
                 stage1_run: tuple[ml_collections.ConfigDict, Mapping[str, Any]] | None = None,
                 batches_fn: BatchesFn | None = None):
        self.config = config
        if stage1_run is None:
            if not config.stage1_workdir:
                raise ValueError("stage1_workdir must name the workdir of a trained stage-I run "
                                 "(train it with the same config file and 'stage1')")
            stage1_run = load_stage1(config.stage1_workdir)
        stage1_config, self.stage1_variables = stage1_run
        if stage1_config.dense_task.name != config.dense_task.name:
            raise ValueError(f"stage1_workdir holds a {stage1_config.dense_task.name!r} model, "
                             f"but dense_task.name is {config.dense_task.name!r}")
        self.dense = build_dense_task(config.dense_task)
        stage1_dense = build_dense_task(stage1_config.dense_task)
        if stage1_dense.target_channels() != self.dense.target_channels():
            raise ValueError("dense_task settings differ from the stage-I run's: "
                             f"{stage1_dense.target_channels()} vs "
                             f"{self.dense.target_channels()}")
        self.stage1_config = stage1_config
        self.stage1 = stage1.build(stage1_config.model, stage1_config.quantizer,
                                   self.dense.target_channels())
        self.codebook_size = quantizers.codebook_size(stage1_config.quantizer)
        self.model = stage2.build(config.stage2, self.codebook_size, self.stage1.code_len)
        self.batches_fn = batches_fn or (lambda: _evaluation_batches(config))
        self._predict = jax.jit(self._predict_fn, static_argnames=("use_oracle",))
        self._encoder_arrays: dict[str, np.ndarray] | None = None  # read by _encoder_init

    def reference_config(self) -> ml_collections.ConfigDict:
        return reference_config(self.config.dense_task.name)

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        stage2.check_config(config.stage2)
        _check_common(config, config.stage2.input_size, "stage2.input_size")
        _check_common(config, self.stage1.input_size, "the stage-I model's input_size")
        if config.stage2.encoder_lr_multiplier <= 0:
            raise ValueError("stage2.encoder_lr_multiplier must be > 0, got "
                             f"{config.stage2.encoder_lr_multiplier}")
        # big_vision slows only a pre-trained encoder (lr_mults 0.1 beside model_init); a
        # randomly initialised one at a tenth of the rate is no setting of the reference.
        if config.stage2.encoder_lr_multiplier != 1.0 and not config.stage2.get("encoder_init"):
            raise ValueError(
                f"stage2.encoder_lr_multiplier = {config.stage2.encoder_lr_multiplier} slows a "
                "pre-trained encoder, but stage2.encoder_init is empty: set "
                "--config.stage2.encoder_init=<ViT .npz> (docs/weights.md) or "
                "--config.stage2.encoder_lr_multiplier=1.0")

    def _optimizer(self) -> optax.GradientTransformation:
        return stage2_optimizer(self.config.optimizer,
                                float(self.config.stage2.encoder_lr_multiplier),
                                self.config.total_steps)

    def _encoder_init(self) -> dict[str, np.ndarray]:
        """The encoder params read from `stage2.encoder_init` (once), or {} when it is empty."""
        if self._encoder_arrays is None:
            path = self.config.stage2.get("encoder_init", "")
            self._encoder_arrays = vit_checkpoint.load_encoder(path, self.model) if path else {}
        return self._encoder_arrays

    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
        image = self.dense.context(batch)
        tokens = jnp.zeros((image.shape[0], self.model.seq_len), jnp.int32)
        params = self.model.init({"params": rng}, image, tokens, train=False)["params"]
        if self._encoder_init():
            params = npz_init.assign(params, self._encoder_init(), vit_checkpoint.FIELD)
        frozen = jax.tree.map(jnp.asarray, self.stage1_variables)
        return TrainState.create({"stage2": params}, {"stage2": self._optimizer()},
                                 model_state={"stage1": frozen},
                                 ema_decay=self.config.ema_decay)

    def encode_targets(self, stage1_variables: Any, batch: Batch) -> jax.Array:
        """The stage-I code of the batch's ground truth: int32 [B, code_len]."""
        out = self.stage1.apply(stage1_variables, self.dense.targets(batch),
                                self.dense.context(batch), train=False,
                                method=stage1.Stage1Model.encode)
        return jax.lax.stop_gradient(out.indices)

    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        tokens = self.encode_targets(state.model_state["stage1"], batch)
        image = self.dense.context(batch)

        def loss_fn(params):
            logits = self.model.apply({"params": params}, image, tokens, train=True,
                                      rngs={"dropout": rng})
            return stage2.sequence_loss(logits, tokens)

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params["stage2"])
        state = state.apply_gradients({"stage2": grads})
        return state, {"loss": loss, "token_accuracy": accuracy,
                       "grad_norm": optax.global_norm(grads),
                       "param_norm": optax.global_norm(state.params["stage2"])}

    def eval_step(self, state: TrainState, batch: Batch, rng: jax.Array
                  ) -> dict[str, jax.Array]:
        """Teacher-forced loss and token accuracy (cheap); decoding runs in the evaluator."""
        del rng
        tokens = self.encode_targets(state.model_state["stage1"], batch)
        logits = self.model.apply({"params": state.eval_params()["stage2"]},
                                  self.dense.context(batch), tokens, train=False)
        loss, accuracy = stage2.sequence_loss(logits, tokens)
        return {"loss": loss, "token_accuracy": accuracy}

    def _predict_fn(self, params: Any, stage1_variables: Any, batch: Batch, rng: jax.Array,
                    use_oracle: bool = False) -> tuple[dict[str, jax.Array], jax.Array]:
        """Image -> code (stage II, or the oracle's) -> stage-I decoder -> task output."""
        context = self.dense.context(batch)
        if use_oracle:
            tokens = self.encode_targets(stage1_variables, batch)
        else:
            tokens = stage2.generate(self.model, params, context, rng,
                                     temperature=float(self.config.stage2.temperature))
        logits = self.stage1.apply(stage1_variables, tokens, context,
                                   method=stage1.Stage1Model.decode_indices)
        return self.dense.predict(logits), tokens

    def predict(self, state: TrainState, batch: Batch, rng: jax.Array
                ) -> tuple[dict[str, jax.Array], jax.Array]:
        """The full UViM inference of a batch: task outputs and the predicted code."""
        return self._predict(state.eval_params()["stage2"], state.model_state["stage1"],
                             batch, rng)

    def evaluators(self) -> list[Stage2Evaluator]:
        return [Stage2Evaluator(self)]

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]:
        batch = jax.tree.map(lambda x: x[:_IMAGE_ROWS], batch)
        prediction, _ = self.predict(state, batch, rng)
        return {"input_target_prediction": _comparison_grid(self.dense, batch, prediction)}


class Stage2Evaluator:
    """UViM's metric of stage-II predictions, beside the oracle's and the codes' usage."""

    name = "uvim"

    def __init__(self, task: Stage2Task):
        self.task = task

    def run(self, state: TrainState) -> Iterator[tuple[str, float]]:
        task = self.task
        metric, oracle = task.dense.new_metric(), task.dense.new_metric()
        usage, oracle_usage = CodeCounter(task.codebook_size), CodeCounter(task.codebook_size)
        params, frozen = state.eval_params()["stage2"], state.model_state["stage1"]
        matches, total = 0, 0
        for index, batch in enumerate(task.batches_fn()):
            rng = jax.random.fold_in(jax.random.key(task.config.seed), index)
            prediction, tokens = task._predict(params, frozen, batch, rng)
            oracle_prediction, oracle_tokens = task._predict(params, frozen, batch, rng,
                                                             use_oracle=True)
            metric.update(_to_numpy(prediction), batch)
            oracle.update(_to_numpy(oracle_prediction), batch)
            usage.update(np.asarray(tokens))
            oracle_usage.update(np.asarray(oracle_tokens))
            matches += int(np.sum(np.asarray(tokens) == np.asarray(oracle_tokens)))
            total += int(np.asarray(tokens).size)
        yield from metric.result().items()
        yield from ((f"oracle_{k}", v) for k, v in oracle.result().items())
        yield from _usage_metrics(usage, "predicted_codebook_").items()
        yield from _usage_metrics(oracle_usage, "codebook_").items()
        yield "token_match", matches / max(total, 1)
