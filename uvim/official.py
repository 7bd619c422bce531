"""big_vision's published UViM checkpoints as our stage I (VQ oracle) and stage II models.

The files (big_vision `configs/proj/uvim/README.md`, `https://storage.googleapis.com/big_vision/
uvim/<name>`): `{panoptic,color,depth}_stage{I,II}_params.npz`, big_vision `.npz` checkpoints of
'/'-joined names. Stage I holds `params/...` and the VQ dictionary `state/dictionary`,
`state/counts` (big_vision `models/proj/uvim/vit.py` `load`); stage II holds the VTT params, with
or without a leading `params/` (`models/proj/uvim/vtt.py` `load` via `utils.load_params`). Every
array goes through an explicit table; a missing, mis-shaped or unexpected array, or a parameter
of ours the file leaves empty, is a `CheckpointMismatchError` naming it. Encoder blocks may use
Linen names (`LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0`) or the
pre-Linen ones (`..._1, LayerNorm_2, MlpBlock_3`, which big_vision renames with
`convert_pre_linen`); old files' `Encoder` / `Decoder` are `encoder` / `decoder`.

Stage I (`vit.py` Model, W = width, C x P^2 = a target's one-hot channels x patch pixels) ->
`uvim.stage1.Stage1Model` with UViM's VQ (`quantizer.vq.standardize`: the bottleneck standardised
before the lookup; `l2_normalize`: unit-norm codewords; `configs/uvim/<task>.py:vq,paper,stage1,
official`), no reshapes. The panoptic instance head has the paper preset's `output.max_instances`
= 100 channels (big_vision `'instances': (100, ...)`):

  embedding_<t>/{kernel [C, P^2, W], bias}    -> embed_<ours>     t: depth, semantics,
  head_<t>/{kernel [W, C, P^2], bias [C, P^2]} -> head_<ours>     instances, color (ours: depth,
                                                                 semantic, instance, color)
  ctx_enc_embedding, ctx_dec_embedding        -> context_encoder/conv, context_decoder/conv
  pos_embedding_encoder, pos_embedding_decoder [1, N, W] -> posemb_{encoder,decoder}/embedding
  {encoder,decoder}/encoderblock_i/LayerNorm_0 -> {encoder,decoder}/block_i/norm_attention
    .../MultiHeadDotProductAttention_0/{query,key,value,out} -> .../attention/...
    .../LayerNorm_1, .../MlpBlock_0/Dense_{0,1} -> .../norm_mlp, .../mlp/Dense_{0,1}
  {encoder,decoder}/encoder_norm              -> {encoder,decoder}/norm
  encoder_head, decoder_stem                  -> to_code, from_code
  state/dictionary [K, D], state/counts [K]   -> quantizer state: codebook = dictionary / counts
                                                 (big_vision's codewords before normalising);
                                                 EMA sums and counts and the usage are
                                                 big_vision's discounted ones x (1 - decay)

Stage II (`vtt.py` Model, E = width) -> `uvim.stage2.Stage2Model` with
`stage2.decoder_attention_bias = False`:

  EmbedPatches                               -> embed_patches/conv
  pos_embedding_encoder, encoder/...          -> posemb_encoder/embedding, encoder/... (as above)
  pos_embedding_decoder [1, L, E]             -> posemb_decoder/embedding
  decoder/EmbedTargets/embedding [K + 1, E]   -> embed_tokens/embedding   (rows re-ordered)
  decoder/EncDecBlock<i>/LayerNorm{1,2,3}     -> decoder_block_i/norm_{self_attention,
                                                 cross_attention,mlp}
  decoder/EncDecBlock<i>/{SelfAttn,CrossAttn}/{query,key,value,out}/kernel
                                              -> decoder_block_i/{self,cross}_attention/...
  decoder/EncDecBlock<i>/MLP/Dense_{0,1}      -> decoder_block_i/mlp/Dense_{0,1}
  decoder/LayerNorm, decoder/LogitsDense      -> decoder_norm, logits  (columns re-ordered)

Vocabulary: big_vision's stage II writes code c as token c + 1 and pads / starts with 0
(`trainers/proj/uvim/train.py` encode_labels `code + 1`, vtt.py `shift_right`); ours writes
code c as c and starts with BOS = K. So our row / column c is their c + 1, and our K their 0.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from fsq_jax import quantizers
from fsq_jax.config_lib import check
from fsq_jax.quantizers import STATE_COLLECTION
from fsq_jax.train import converted, npz_init
from fsq_jax.train.frozen import frozen_from_variables
from fsq_jax.train.npz_init import ConversionError, Entry, assign_all
from fsq_jax.train.validate import validate
from uvim import stage1, stage2, tasks
from uvim.outputs import build_output

# big_vision configs/proj/uvim/README.md: the published files by task.
URL = "https://storage.googleapis.com/big_vision/uvim/"
FILES = {"panoptic": ("panoptic_stageI_params.npz", "panoptic_stageII_params.npz"),
         "colorization": ("color_stageI_params.npz", "color_stageII_params.npz"),
         "depth": ("depth_stageI_params.npz", "depth_stageII_params.npz")}
# Our target names -> big_vision's (configs/proj/uvim/vqvae_*.py model.inputs).
TARGET_NAMES = {"depth": "depth", "semantic": "semantics", "instance": "instances",
                "color": "color"}
# Encoder-block submodules: Linen numbering, and the pre-Linen one of older files.
BLOCK_LAYOUTS = {
    "linen": ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
    "pre_linen": ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
}
DICTIONARY, COUNTS = "state/dictionary", "state/counts"


def read_arrays(path: str, origin: str) -> dict[str, np.ndarray]:
    """The arrays of a big_vision `.npz`, without a leading `params/`, old `Encoder` / `Decoder`
    renamed to `encoder` / `decoder`."""
    arrays = npz_init.read_npz(path, origin)
    renamed = {}
    for name, value in arrays.items():
        name = name.removeprefix("params/")
        for old, new in (("Encoder/", "encoder/"), ("Decoder/", "decoder/")):
            if name.startswith(old):
                name = new + name[len(old):]
        renamed[name] = value
    return renamed


def block_layout(arrays: Mapping[str, np.ndarray]) -> str:
    """"pre_linen" when the encoder blocks use pre-Linen numbering, else "linen"."""
    marker = f"/{BLOCK_LAYOUTS['pre_linen'][1]}/"
    return "pre_linen" if any(marker in name for name in arrays) else "linen"


def _norm(source: str, target: str, width: int) -> list[Entry]:
    return [Entry(f"{source}/{p}", (width,), f"{target}/{p}") for p in ("scale", "bias")]


def _dense(source: str, target: str, cin: int, cout: int, bias: bool = True) -> list[Entry]:
    entries = [Entry(f"{source}/kernel", (cin, cout), f"{target}/kernel")]
    return entries + ([Entry(f"{source}/bias", (cout,), f"{target}/bias")] if bias else [])


def _attention(source: str, target: str, width: int, heads: int, bias: bool) -> list[Entry]:
    head_dim = width // heads
    entries = []
    for projection in ("query", "key", "value"):
        entries.append(Entry(f"{source}/{projection}/kernel", (width, heads, head_dim),
                             f"{target}/{projection}/kernel"))
        if bias:
            entries.append(Entry(f"{source}/{projection}/bias", (heads, head_dim),
                                 f"{target}/{projection}/bias"))
    entries.append(Entry(f"{source}/out/kernel", (heads, head_dim, width), f"{target}/out/kernel"))
    if bias:
        entries.append(Entry(f"{source}/out/bias", (width,), f"{target}/out/bias"))
    return entries


def encoder_entries(source: str, target: str, *, depth: int, width: int, heads: int,
                    mlp_dim: int, layout: str) -> list[Entry]:
    """big_vision `models/vit.py` Encoder (`encoderblock_i`, `encoder_norm`) -> `uvim.vit.Encoder`
    (`block_i`, `norm`)."""
    norm_attention, attention, norm_mlp, mlp = BLOCK_LAYOUTS[layout]
    entries = []
    for i in range(depth):
        s, t = f"{source}/encoderblock_{i}", f"{target}/block_{i}"
        entries += _norm(f"{s}/{norm_attention}", f"{t}/norm_attention", width)
        entries += _attention(f"{s}/{attention}", f"{t}/attention", width, heads, bias=True)
        entries += _norm(f"{s}/{norm_mlp}", f"{t}/norm_mlp", width)
        entries += _dense(f"{s}/{mlp}/Dense_0", f"{t}/mlp/Dense_0", width, mlp_dim)
        entries += _dense(f"{s}/{mlp}/Dense_1", f"{t}/mlp/Dense_1", mlp_dim, width)
    return entries + _norm(f"{source}/encoder_norm", f"{target}/norm", width)


# -- stage I -----------------------------------------------------------------------------------


def stage1_entries(model: ml_collections.ConfigDict, targets: Mapping[str, int],
                   codebook_size: int, code_dim: int, layout: str = "linen") -> list[Entry]:
    """Stage I's table (see the module docstring); `targets` = our `{name: channels}`. The VQ
    dictionary maps to `quantizer/dictionary` and `quantizer/counts`, turned into our state by
    `stage1_state`."""
    width, patch = model.width, model.patch_size
    pixels, grid = patch * patch, (model.input_size // patch) ** 2
    entries = []
    for name, channels in targets.items():
        theirs = TARGET_NAMES.get(name)
        if theirs is None:
            raise ConversionError(f"output target {name!r} is not one of big_vision's UViM "
                                  f"targets {sorted(TARGET_NAMES)}")
        entries += [Entry(f"embedding_{theirs}/kernel", (channels, pixels, width),
                          f"embed_{name}/kernel"),
                    Entry(f"embedding_{theirs}/bias", (width,), f"embed_{name}/bias"),
                    Entry(f"head_{theirs}/kernel", (width, channels, pixels),
                          f"head_{name}/kernel"),
                    Entry(f"head_{theirs}/bias", (channels, pixels), f"head_{name}/bias")]
    for theirs, ours in (("ctx_enc_embedding", "context_encoder"),
                         ("ctx_dec_embedding", "context_decoder")):
        entries += [Entry(f"{theirs}/kernel", (patch, patch, 3, width), f"{ours}/conv/kernel"),
                    Entry(f"{theirs}/bias", (width,), f"{ours}/conv/bias")]
    for part in ("encoder", "decoder"):
        entries.append(Entry(f"pos_embedding_{part}", (1, grid, width),
                             f"posemb_{part}/embedding"))
    blocks = {"width": width, "heads": model.num_heads, "mlp_dim": model.mlp_dim,
              "layout": layout}
    entries += encoder_entries("encoder", "encoder", depth=model.enc_depth, **blocks)
    entries += encoder_entries("decoder", "decoder", depth=model.dec_depth, **blocks)
    entries += _dense("encoder_head", "to_code", width, code_dim)
    entries += _dense("decoder_stem", "from_code", code_dim, width)
    entries += [Entry(DICTIONARY, (codebook_size, code_dim), "quantizer/dictionary"),
                Entry(COUNTS, (codebook_size,), "quantizer/counts")]
    return entries


def stage1_state(dictionary: np.ndarray, counts: np.ndarray, vq: ml_collections.ConfigDict
                 ) -> dict[str, np.ndarray]:
    """Our VQ's codebook and statistics from big_vision's discounted sums and counts.

    big_vision keeps `counts <- m * counts + n` and `dictionary <- m * dictionary + sum(x)`
    (codewords `dictionary / counts`, unit-normalised at use); our EMA keeps
    `count <- d * count + (1 - d) * n`, the same recursion scaled by (1 - d), and our usage
    (hits per batch) is `counts * (1 - usage_decay)`.
    """
    dictionary = np.asarray(dictionary, np.float32)
    counts = np.asarray(counts, np.float32)
    return {"codebook": dictionary / counts[:, None],
            "ema_sum": dictionary * np.float32(1.0 - vq.ema_decay),
            "ema_count": counts * np.float32(1.0 - vq.ema_decay),
            "usage": counts * np.float32(1.0 - vq.usage_decay),
            "codebook_correction": np.zeros_like(dictionary),
            "initialized": np.ones((), np.bool_)}


def _check_stage1_config(config: ml_collections.ConfigDict) -> None:
    wanted = {"quantizer.name": (config.quantizer.name, "vq"),
              "quantizer.vq.l2_normalize": (config.quantizer.vq.l2_normalize, True),
              "quantizer.vq.standardize": (config.quantizer.vq.standardize, True),
              "model.with_context": (config.model.with_context, True)}
    for field, (have, want) in wanted.items():
        if have != want:
            raise ConversionError(f"config.{field} = {have!r}: the published stage I needs "
                                  f"{want!r} (configs/uvim/<task>.py:vq,paper,stage1,official)")


def convert_stage1(arrays: Mapping[str, np.ndarray], config: ml_collections.ConfigDict,
                   origin: str, ignore: Sequence[str] = ()) -> dict[str, Any]:
    """Our stage-I variables `{"params": ..., "quantizer_state": ...}` from the arrays of a
    published stage-I file (`read_arrays`). `config` is a UViM experiment config."""
    _check_stage1_config(config)
    model = stage1.build(config.model, config.quantizer,
                         build_output(config.output).target_channels())
    entries = stage1_entries(config.model, dict(model.targets), model.quantizer.codebook_size,
                             model.code_dim, block_layout(arrays))
    values = npz_init.map_arrays(arrays, entries, origin, ignore=ignore)
    state = stage1_state(values.pop("quantizer/dictionary"), values.pop("quantizer/counts"),
                         config.quantizer.vq)
    template = jax.eval_shape(lambda: stage1.init_variables(model, jax.random.key(0)))
    # The codebook is a parameter of a gradient-trained VQ and state of an EMA one.
    candidates = {"params": {**values, "quantizer/codebook": state["codebook"]},
                  STATE_COLLECTION: {f"quantizer/{k}": v for k, v in state.items()}}
    variables = {}
    for collection, tree in template.items():
        flat = traverse_util.flatten_dict(dict(tree), sep="/")
        chosen = {k: v for k, v in candidates.get(collection, {}).items() if k in flat}
        variables[collection] = assign_all(tree, chosen, f"{origin} ({collection})")
    return variables


# -- stage II ----------------------------------------------------------------------------------


def stage2_entries(model: ml_collections.ConfigDict, codebook_size: int, seq_len: int,
                   layout: str = "linen") -> list[Entry]:
    """Stage II's table (see the module docstring)."""
    width, patch, heads = model.width, model.patch_size, model.num_heads
    grid = (model.input_size // patch) ** 2
    vocab = codebook_size + 1
    order = np.concatenate([np.arange(1, vocab), [0]])  # our id c is their c + 1; BOS is 0
    entries = [
        Entry("EmbedPatches/kernel", (patch, patch, 3, width), "embed_patches/conv/kernel"),
        Entry("EmbedPatches/bias", (width,), "embed_patches/conv/bias"),
        Entry("pos_embedding_encoder", (1, grid, width), "posemb_encoder/embedding"),
        *encoder_entries("encoder", "encoder", depth=model.enc_depth, width=width, heads=heads,
                         mlp_dim=model.mlp_dim, layout=layout),
        Entry("pos_embedding_decoder", (1, seq_len, width), "posemb_decoder/embedding"),
        Entry("decoder/EmbedTargets/embedding", (vocab, width), "embed_tokens/embedding",
              lambda embedding: embedding[order]),
    ]
    for i in range(model.dec_depth):
        s, t = f"decoder/EncDecBlock{i}", f"decoder_block_{i}"
        entries += _norm(f"{s}/LayerNorm1", f"{t}/norm_self_attention", width)
        entries += _attention(f"{s}/SelfAttn", f"{t}/self_attention", width, heads, bias=False)
        entries += _norm(f"{s}/LayerNorm2", f"{t}/norm_cross_attention", width)
        entries += _attention(f"{s}/CrossAttn", f"{t}/cross_attention", width, heads, bias=False)
        entries += _norm(f"{s}/LayerNorm3", f"{t}/norm_mlp", width)
        entries += _dense(f"{s}/MLP/Dense_0", f"{t}/mlp/Dense_0", width, model.mlp_dim)
        entries += _dense(f"{s}/MLP/Dense_1", f"{t}/mlp/Dense_1", model.mlp_dim, width)
    entries += _norm("decoder/LayerNorm", "decoder_norm", width)
    entries += [Entry("decoder/LogitsDense/kernel", (width, vocab), "logits/kernel",
                      lambda kernel: kernel[:, order]),
                Entry("decoder/LogitsDense/bias", (vocab,), "logits/bias",
                      lambda bias: bias[order])]
    return entries


def convert_stage2(arrays: Mapping[str, np.ndarray], model_config: ml_collections.ConfigDict,
                   codebook_size: int, seq_len: int, origin: str,
                   ignore: Sequence[str] = ()) -> dict[str, Any]:
    """Our `Stage2Model` params from the arrays of a published stage-II file. A decoder with
    attention biases (`stage2.decoder_attention_bias = True`) is refused naming the first bias
    the file does not fill."""
    entries = stage2_entries(model_config, codebook_size, seq_len, block_layout(arrays))
    values = npz_init.map_arrays(arrays, entries, origin, ignore=ignore)
    model = stage2.build(model_config, codebook_size, seq_len)
    template = jax.eval_shape(lambda: stage2.init_variables(model, jax.random.key(0)))
    return assign_all(template["params"], values, origin)


def load_stage1(path: str, config: ml_collections.ConfigDict, ignore: Sequence[str] = ()
                ) -> dict[str, Any]:
    """`convert_stage1` of the file at `path`."""
    return convert_stage1(read_arrays(path, path), config, path, ignore)


def load_stage2(path: str, model_config: ml_collections.ConfigDict, codebook_size: int,
                seq_len: int, ignore: Sequence[str] = ()) -> dict[str, Any]:
    """`convert_stage2` of the file at `path`."""
    return convert_stage2(read_arrays(path, path), model_config, codebook_size, seq_len, path,
                          ignore)


# -- run directories ---------------------------------------------------------------------------


def dummy_batch(size: int) -> dict[str, np.ndarray]:
    """One example with every key a UViM output reads (shapes only: it initialises a state)."""
    return {"image": np.zeros((1, size, size, 3), np.uint8),
            "gray": np.zeros((1, size, size, 1), np.uint8),
            "depth": np.ones((1, size, size), np.float32),
            "panoptic_semantic": np.zeros((1, size, size), np.int32),
            "panoptic_instance": np.zeros((1, size, size), np.int32),
            "label": np.zeros((1,), np.int32)}


@dataclasses.dataclass(frozen=True)
class _Stage:
    """What a converted stage's run directory is made of."""

    workdir: str
    config: ml_collections.ConfigDict
    task: Any
    params: Any
    group: str
    model_state: dict[str, Any]


def _write(stage: _Stage) -> None:
    state = jax.jit(stage.task.init_state)(jax.random.key(stage.config.seed),
                                           dummy_batch(int(stage.config.data.image_size)))
    state = state.replace(params={stage.group: stage.params},
                          model_state={**state.model_state, **stage.model_state})
    if state.ema_params:
        state = state.replace(ema_params={stage.group: stage.params})
    converted.write_run(stage.workdir, stage.config, state)


def write_runs(out: str, stage1_path: str, stage1_config: ml_collections.ConfigDict,
               stage2_path: str = "", stage2_config: ml_collections.ConfigDict | None = None,
               ignore: Sequence[str] = ()) -> dict[str, str]:
    """Converts the published files into run directories `out/stage1` (and `out/stage2`).

    Each holds a config.json and one checkpoint (`fsq_jax.train.converted.write_run`), so
    `scripts/evaluate.py` runs our protocols on them as on our own runs; optimiser states are
    fresh.

    Args:
      out: output directory (must not hold these runs yet).
      stage1_path, stage2_path: the published `.npz` files ("" = no stage II).
      stage1_config, stage2_config: `configs/uvim/<task>.py:vq,paper,stage{1,2},official`.
      ignore: regexes of checkpoint arrays to leave out instead of refusing them.

    Returns:
      {"stage1": its run directory[, "stage2": its run directory]}.
    """
    runs = {"stage1": os.path.join(out, "stage1")}
    validate(stage1_config)
    variables = load_stage1(stage1_path, stage1_config, ignore)
    params = None
    if stage2_path:  # checked and converted before anything is written
        runs["stage2"] = os.path.join(out, "stage2")
        check(stage2_config, tasks.Stage2Task.config_schema, "config")
        params = load_stage2(stage2_path, stage2_config.stage2,
                             quantizers.codebook_size(stage1_config.quantizer),
                             stage1_config.model.code_len, ignore)
    model_state = {k: v for k, v in variables.items() if k != "params"}
    _write(_Stage(runs["stage1"], stage1_config, tasks.Stage1Task(stage1_config),
                  variables["params"], "model", model_state))
    if params is None:
        return runs
    stage2_config.stage1_workdir = os.path.abspath(runs["stage1"])
    validate(stage2_config)
    frozen = frozen_from_variables(stage1_config, "model", variables)
    _write(_Stage(runs["stage2"], stage2_config, tasks.Stage2Task(stage2_config, frozen), params,
                  "stage2", {}))
    return runs
