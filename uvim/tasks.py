"""UViM's two training stages as tasks of the shared fsq_jax training loop.

`Stage1Task` trains the oracle autoencoder of a dense output (depth, colour, panoptic map);
`Stage2Task` freezes a trained stage-I model and trains the language model that predicts its
code from the image. Both supply pure train/eval steps, evaluators (the task metric and codebook
usage, run with the loop's `EvalContext`) and picture grids.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from fsq_jax import codebook, quantizers
from fsq_jax import images as image_lib
from fsq_jax.config_lib import ConfigError, LoopConfig, OptimizerConfig, require
from fsq_jax.data.preprocess import NATIVE_PREFIX
from fsq_jax.eval.codebook_report import CodeCounter
from fsq_jax.quantizers import RNG_STREAM, STATE_COLLECTION
from fsq_jax.quantizers.registry import QuantizerConfig
from fsq_jax.train import TrainState, npz_init, optim
from fsq_jax.train.frozen import FrozenStage
from uvim import coltran_fid, stage1, stage2, vit_checkpoint
from uvim.outputs import OutputConfig, build_output

Batch = Mapping[str, jax.Array]
_IMAGE_ROWS = 8  # examples shown in a picture grid


@dataclasses.dataclass(frozen=True, kw_only=True)
class UvimEvaluators:
    """`evaluators.*`: the task metric reads this many `eval_batch_size` validation batches;
    0 = the whole validation split, each example once (UViM's NYU depth and COCO panoptic
    protocols: all 654 / 5000 images)."""

    num_batches: int

    def __post_init__(self):
        require(self.num_batches >= 0, "num_batches", "must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UvimConfig(LoopConfig):
    """A UViM experiment (configs/uvim/*.py): both stages' sections, one of them trained."""

    output: OutputConfig
    model: stage1.Stage1Config
    stage2: stage2.Stage2Config
    quantizer: QuantizerConfig
    stage1_workdir: str  # stage II: the finished stage-I run whose code it predicts
    optimizer: OptimizerConfig
    evaluators: UvimEvaluators

    def __post_init__(self):
        super().__post_init__()
        if self.output.name == "panoptic":  # the classes are the data source's
            from fsq_jax import data

            classes = data.panoptic_classes(self.data)
            things = tuple(i for i, thing in enumerate(classes.is_thing) if thing)
            require(self.output.num_classes == len(classes.names), "output.num_classes",
                    f"the data source {self.data.source!r} has {len(classes.names)} classes")
            require(tuple(self.output.thing_classes) == things, "output.thing_classes",
                    f"the data source's thing classes are {things}")
        if self.output.name == "colorization" and self.output.fid == "coltran":
            require(self.data.source == f"tfds:{coltran_fid.DATASET}", "output.fid",
                    f"'coltran' scores ColTran's {coltran_fid.DATASET} validation files; "
                    f"data.source is {self.data.source!r} (use 'ground_truth' or 'none')")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage1TaskConfig(UvimConfig):
    def __post_init__(self):
        super().__post_init__()
        require(self.model.input_size == self.data.image_size, "model.input_size",
                f"must equal data.image_size ({self.data.image_size})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage2TaskConfig(UvimConfig):
    def __post_init__(self):
        super().__post_init__()
        require(self.stage2.input_size == self.data.image_size, "stage2.input_size",
                f"must equal data.image_size ({self.data.image_size})")


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _comparison_grid(output: Any, batch: Batch, prediction: Any) -> np.ndarray:
    """Rows of input image | target | prediction, as the picture a person checks over training."""
    columns = [np.asarray(image_lib.to_uint8(output.context(batch))),
               output.visualize(_to_numpy(output.ground_truth(batch))),
               output.visualize(_to_numpy(prediction))]
    rows = len(columns[0])
    return image_lib.image_grid(np.stack(columns, axis=1).reshape(-1, *columns[0].shape[1:]),
                                rows=rows, min_size=128)


def _usage_metrics(counter: CodeCounter, prefix: str) -> dict[str, float]:
    """`<prefix>usage` and `<prefix>perplexity` of the codes counted over an evaluation."""
    return {f"{prefix}usage": codebook.usage(counter.counts),
            f"{prefix}perplexity": codebook.perplexity(counter.counts)}


def _evaluation_batches(config: ml_collections.ConfigDict, context: Any
                        ) -> Iterator[dict[str, np.ndarray]]:
    """`evaluators.num_batches` validation batches of `eval_batch_size`, or with 0 the whole
    validation split once (the last batch padded and masked)."""
    size = int(config.eval_batch_size)
    batches = int(config.evaluators.num_batches)
    return context.batches(size, size * batches if batches else None)


def _model_inputs(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch without its native-resolution ground truth, which only the metric reads
    (it would be copied to the devices for nothing)."""
    return {k: v for k, v in batch.items() if not k.startswith(NATIVE_PREFIX)}


def _protocol_evaluators(config: ml_collections.ConfigDict,
                         predict: coltran_fid.PredictFn) -> list[Any]:
    """Evaluators of a task's paper protocol that read their own data: colorization's
    ColTran FID-5k."""
    if config.output.name == "colorization" and config.output.fid == "coltran":
        data = config.data
        return [coltran_fid.ColtranFidEvaluator(
            predict, lambda: coltran_fid.ColtranFidData.from_tfds(int(data.image_size),
                                                                  str(data.tfds_data_dir)),
            batch_size=int(config.eval_batch_size))]
    return []


class Stage1Task:
    """UViM stage I: autoencode the task output through the quantizer, with image context.

    Parameter group "model"; the quantizer's state (VQ EMA, usage) lives in `model_state`.
    """

    config_schema = Stage1TaskConfig

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.output = build_output(config.output)
        self.model = stage1.build(config.model, config.quantizer, self.output.target_channels())
        self.codebook_size = quantizers.codebook_size(config.quantizer)
        self._reconstruct = jax.jit(self.reconstruct)

    def _variables(self, params: Any, model_state: Mapping[str, Any]) -> dict[str, Any]:
        return {"params": params, **model_state}

    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
        rngs = dict(zip(("params", "dropout", RNG_STREAM), jax.random.split(rng, 3)))
        variables = dict(self.model.init(rngs, self.output.targets(batch),
                                         self.output.context(batch), train=False))
        params = variables.pop("params")
        tx = optim.build(self.config.optimizer, self.config.total_steps)
        return TrainState.create({"model": params}, {"model": tx}, model_state=variables,
                                 ema_decay=self.config.ema_decay)

    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        dropout_rng, quantizer_rng = jax.random.split(rng)
        targets, context = self.output.targets(batch), self.output.context(batch)

        def loss_fn(params):
            (logits, out), mutated = self.model.apply(
                self._variables(params, state.model_state), targets, context, train=True,
                rngs={"dropout": dropout_rng, RNG_STREAM: quantizer_rng},
                mutable=[STATE_COLLECTION])
            loss, metrics = self.output.loss(logits, batch)
            return loss + out.loss, (loss, metrics, out, mutated)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (total, (loss, metrics, out, mutated)), grads = grad_fn(state.params["model"])
        state = state.apply_gradients({"model": grads},
                                      model_state={**state.model_state, **mutated})
        return state, {"loss": total, "task_loss": loss, "quantizer_loss": out.loss, **metrics,
                       **{f"quantizer/{k}": v for k, v in out.metrics.items()}}

    def _logits(self, params: Any, model_state: Any, batch: Batch) -> tuple[Any, Any]:
        return self.model.apply(self._variables(params, model_state),
                                self.output.targets(batch), self.output.context(batch),
                                train=False)

    def reconstruct(self, params: Any, model_state: Any, batch: Batch
                    ) -> tuple[dict[str, jax.Array], jax.Array]:
        """Pure: the oracle's task output of a batch and its code indices [B, code_len]."""
        logits, out = self._logits(params, model_state, batch)
        return self.output.predict(logits), out.indices

    def eval_step(self, state: TrainState, batch: Batch, rng: jax.Array
                  ) -> dict[str, jax.Array]:
        del rng
        logits, out = self._logits(state.eval_params()["model"], state.model_state, batch)
        loss, metrics = self.output.loss(logits, batch)
        prediction = self.output.predict(logits)
        return {"loss": loss, **metrics, **self.output.batch_metrics(prediction, batch),
                **{f"quantizer/{k}": v for k, v in out.metrics.items()}}

    def evaluators(self) -> list[Any]:
        def predict(state, batch, rng, context):
            del rng
            replicated = (state.eval_params()["model"], state.model_state)
            return context.run(self._reconstruct, replicated, batch)[0]

        return [OracleEvaluator(self), *_protocol_evaluators(self.config, predict)]

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]:
        del rng
        batch = jax.tree.map(lambda x: x[:_IMAGE_ROWS], batch)
        prediction, _ = self._reconstruct(state.eval_params()["model"], state.model_state,
                                          batch)
        return {"input_target_reconstruction": _comparison_grid(self.output, batch, prediction)}


class OracleEvaluator:
    """Stage-I reconstruction quality (the "oracle" metric) and codebook usage on held-out data."""

    name = "oracle"

    def __init__(self, task: Stage1Task):
        self.task = task

    def run(self, state: TrainState, context: Any) -> Iterator[tuple[str, float]]:
        task = self.task
        metric = task.output.new_metric()
        usage = CodeCounter(task.codebook_size)
        replicated = (state.eval_params()["model"], state.model_state)
        scored = 0
        for batch in _evaluation_batches(task.config, context):
            prediction, indices = context.real(
                context.run(task._reconstruct, replicated, _model_inputs(batch)), batch)
            scored += context.count(batch)
            if len(indices):  # padding only on this host
                metric.update(prediction, context.real(batch))
                usage.update(indices)
        yield "num_examples", scored
        yield from metric.result().items()
        yield from _usage_metrics(usage, "codebook_").items()


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
    scaled.end_learning_rate = optimizer.end_learning_rate * encoder_lr_multiplier
    encoder = optim.build(scaled, total_steps)
    split = optax.multi_transform({"encoder": encoder, "decoder": decoder}, _split_encoder)
    clip = float(optimizer.grad_clip_norm)
    return optax.chain(optax.clip_by_global_norm(clip), split) if clip > 0 else split


class Stage2Task:
    """UViM stage II: predict the frozen stage-I code of the task output from the image.

    Parameter group "stage2"; the frozen stage-I variables ride along in
    `model_state["stage1"]`, so checkpoints are self-contained. A non-empty
    `stage2.encoder_init` names a ViT `.npz` the encoder starts from (`uvim.vit_checkpoint`).

    Args:
      config: the stage-II config (`stage1_workdir` names the trained stage-I run).
      frozen: the stage-I run (`fsq_jax.train.load_frozen(config.stage1_workdir, ...)` or
        `fsq_jax.train.frozen_from_variables(...)`).
    """

    config_schema = Stage2TaskConfig
    frozen_stage_field = "stage1_workdir"

    @staticmethod
    def check_frozen(config: Stage2TaskConfig, frozen: ml_collections.ConfigDict) -> None:
        """ValueError unless `frozen` is a stage-I run of the same task output and image size."""
        if "output" not in frozen or "model" not in frozen:
            raise ValueError("not a UViM stage-I run (train it with the same config file and "
                             "'stage1')")
        if frozen.output.name != config.output.name:
            raise ValueError(f"holds a {frozen.output.name!r} model, but output.name is "
                             f"{config.output.name!r}")
        theirs = build_output(frozen.output).target_channels()
        ours = build_output(config.output).target_channels()
        if theirs != ours:
            raise ValueError(f"output settings differ from the stage-I run's: {theirs} vs {ours}")
        if frozen.model.input_size != config.data.image_size:
            raise ValueError(f"its model.input_size ({frozen.model.input_size}) must equal "
                             f"data.image_size ({config.data.image_size})")

    def __init__(self, config: ml_collections.ConfigDict, frozen: FrozenStage):
        # big_vision slows only a pre-trained encoder (lr_mults 0.1 beside model_init); a
        # randomly initialised one at a tenth of the rate is no setting of the reference.
        if config.stage2.encoder_lr_multiplier != 1.0 and not config.stage2.encoder_init:
            raise ConfigError(
                f"config.stage2.encoder_lr_multiplier = {config.stage2.encoder_lr_multiplier} "
                "slows a pre-trained encoder, but stage2.encoder_init is empty: set "
                "--config.stage2.encoder_init=<ViT .npz> (docs/weights.md) or "
                "--config.stage2.encoder_lr_multiplier=1.0")
        self.config = config
        self.frozen = frozen
        self.stage1_config = frozen.config
        self.output = build_output(config.output)
        self.stage1 = stage1.build(self.stage1_config.model, self.stage1_config.quantizer,
                                   self.output.target_channels())
        self.codebook_size = quantizers.codebook_size(self.stage1_config.quantizer)
        self.model = stage2.build(config.stage2, self.codebook_size, self.stage1.code_len)
        self._predict = jax.jit(self.predict_fn, static_argnames=("use_oracle",))

    @property
    def stage1_variables(self) -> dict[str, Any]:
        """The frozen stage-I variables (EMA params when kept, and the quantizer state)."""
        return self.frozen.variables("model")

    def _optimizer(self) -> optax.GradientTransformation:
        return stage2_optimizer(self.config.optimizer,
                                float(self.config.stage2.encoder_lr_multiplier),
                                self.config.total_steps)

    @functools.cached_property
    def _encoder_init(self) -> dict[str, np.ndarray]:
        """The encoder params read from `stage2.encoder_init` (once), or {} when it is empty."""
        path = self.config.stage2.encoder_init
        return vit_checkpoint.load_encoder(path, self.model) if path else {}

    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
        image = self.output.context(batch)
        tokens = jax.numpy.zeros((image.shape[0], self.model.seq_len), jax.numpy.int32)
        params = self.model.init({"params": rng}, image, tokens, train=False)["params"]
        if self._encoder_init:
            params = npz_init.assign(params, self._encoder_init, vit_checkpoint.FIELD)
        frozen = jax.tree.map(jax.numpy.asarray, self.stage1_variables)
        return TrainState.create({"stage2": params}, {"stage2": self._optimizer()},
                                 model_state={"stage1": frozen},
                                 ema_decay=self.config.ema_decay)

    def encode_targets(self, stage1_variables: Any, batch: Batch) -> jax.Array:
        """The stage-I code of the batch's ground truth: int32 [B, code_len]."""
        out = self.stage1.apply(stage1_variables, self.output.targets(batch),
                                self.output.context(batch), train=False,
                                method=stage1.Stage1Model.encode)
        return jax.lax.stop_gradient(out.indices)

    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        tokens = self.encode_targets(state.model_state["stage1"], batch)
        image = self.output.context(batch)

        def loss_fn(params):
            logits = self.model.apply({"params": params}, image, tokens, train=True,
                                      rngs={"dropout": rng})
            return stage2.sequence_loss(logits, tokens)

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params["stage2"])
        return state.apply_gradients({"stage2": grads}), {"loss": loss,
                                                           "token_accuracy": accuracy}

    def eval_step(self, state: TrainState, batch: Batch, rng: jax.Array
                  ) -> dict[str, jax.Array]:
        """Teacher-forced loss and token accuracy (cheap); decoding runs in the evaluator."""
        del rng
        tokens = self.encode_targets(state.model_state["stage1"], batch)
        logits = self.model.apply({"params": state.eval_params()["stage2"]},
                                  self.output.context(batch), tokens, train=False)
        loss, accuracy = stage2.sequence_loss(logits, tokens)
        return {"loss": loss, "token_accuracy": accuracy}

    def predict_fn(self, params: Any, stage1_variables: Any, batch: Batch, rng: jax.Array,
                   use_oracle: bool = False) -> tuple[dict[str, jax.Array], jax.Array]:
        """Pure: image -> code (stage II, or the oracle's) -> stage-I decoder -> task output."""
        context = self.output.context(batch)
        if use_oracle:
            tokens = self.encode_targets(stage1_variables, batch)
        else:
            tokens = stage2.generate(self.model, params, context, rng,
                                     temperature=float(self.config.stage2.temperature))
        logits = self.stage1.apply(stage1_variables, tokens, context,
                                   method=stage1.Stage1Model.decode_indices)
        return self.output.predict(logits), tokens

    def predict(self, state: TrainState, batch: Batch, rng: jax.Array
                ) -> tuple[dict[str, jax.Array], jax.Array]:
        """The full UViM inference of a batch: task outputs and the predicted code."""
        return self._predict(state.eval_params()["stage2"], state.model_state["stage1"],
                             batch, rng)

    def evaluators(self) -> list[Any]:
        def predict(state, batch, rng, context):
            replicated = (state.eval_params()["stage2"], state.model_state["stage1"])
            return context.run(self._predict, replicated, batch, rng)[0]

        return [Stage2Evaluator(self), *_protocol_evaluators(self.config, predict)]

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]:
        batch = jax.tree.map(lambda x: x[:_IMAGE_ROWS], batch)
        prediction, _ = self.predict(state, batch, rng)
        return {"input_target_prediction": _comparison_grid(self.output, batch, prediction)}


class Stage2Evaluator:
    """UViM's metric of stage-II predictions, beside the oracle's and the codes' usage."""

    name = "uvim"

    def __init__(self, task: Stage2Task):
        self.task = task

    def run(self, state: TrainState, context: Any) -> Iterator[tuple[str, float]]:
        task = self.task
        metric, oracle = task.output.new_metric(), task.output.new_metric()
        usage, oracle_usage = CodeCounter(task.codebook_size), CodeCounter(task.codebook_size)
        replicated = (state.eval_params()["stage2"], state.model_state["stage1"])
        matches, total, scored = 0, 0, 0
        for index, batch in enumerate(_evaluation_batches(task.config, context)):
            rng = context.batch_rng(index)
            inputs = _model_inputs(batch)
            prediction, tokens = context.run(task._predict, replicated, inputs, rng)
            oracle_prediction, oracle_tokens = context.run(
                lambda p, v, b, r: task._predict(p, v, b, r, use_oracle=True), replicated, inputs,
                rng)
            prediction, tokens, oracle_prediction, oracle_tokens = context.real(
                (prediction, tokens, oracle_prediction, oracle_tokens), batch)
            scored += context.count(batch)
            if not len(tokens):  # padding only on this host
                continue
            batch = context.real(batch)
            metric.update(prediction, batch)
            oracle.update(oracle_prediction, batch)
            usage.update(tokens)
            oracle_usage.update(oracle_tokens)
            matches += int(np.sum(tokens == oracle_tokens))
            total += int(tokens.size)
        yield "num_examples", scored
        yield from metric.result().items()
        yield from ((f"oracle_{k}", v) for k, v in oracle.result().items())
        yield from _usage_metrics(usage, "predicted_codebook_").items()
        yield from _usage_metrics(oracle_usage, "codebook_").items()
        yield "token_match", matches / max(total, 1)
