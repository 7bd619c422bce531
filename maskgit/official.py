"""google-research/maskgit's published ImageNet checkpoints as our tokenizer and transformer.

The files (google-research/maskgit README, `https://storage.googleapis.com/maskgit-public/
checkpoints/<name>`): `tokenizer_imagenet{256,512}_checkpoint` and
`maskgit_imagenet{256,512}_checkpoint`, flax msgpack files (maskgit `utils.py`
`restore_from_path`: `flax.serialization.from_bytes(None, ...)`) of `{"params": ...}`.
`read_checkpoint` reads those, or an `.npz` of the same arrays under '/'-joined names. Every array
goes through an explicit table (`tokenizer_entries`, `transformer_entries`) that states its
shape and our parameter; a missing, mis-shaped or unexpected array, or a parameter of ours the
file does not fill, is a `CheckpointMismatchError` naming it.

Tokenizer (maskgit `nets/vqgan_tokenizer.py` VQVAE) -> `maskgit.tokenizer.Tokenizer` with
`model.shortcut = "output"`, `model.project_codes = False`, `model.image_range = "unit"` and a
VQ of 1024 codes of dim 256 (`configs/maskgit/tokenizer.py:vq,paper,official`). The names are
ours one for one (both are Flax modules built in the same order), no reshapes:

  encoder/Conv_0/kernel [3, 3, 3, f]                      stem, no bias
  encoder/ResBlock_r/{GroupNorm_0, Conv_0, GroupNorm_1, Conv_1[, Conv_2]}
                                                          Conv_2 = 1x1 shortcut [1, 1, out, out]
                                                          (applied to the block output)
  encoder/GroupNorm_0, encoder/Conv_1 [1, 1, 4f, 256]     head (Conv_k after conv downsamplers)
  quantizer/codebook [1024, 256]
  decoder/Conv_0 [3, 3, 256, 4f], decoder/ResBlock_r/..., decoder/Conv_1..4 (after each nearest
  2x upsampling), decoder/GroupNorm_0, decoder/Conv_5 [3, 3, f, 3]

Transformer (maskgit `nets/maskgit_transformer.py` Transformer) -> `MaskedTransformer`:

  Embed_0/word_embeddings/embedding [V, D]     -> token_embedding/embedding (rows re-ordered)
  Embed_0/position_embeddings/embedding [1+N, D] -> position_embedding
  Embed_0/embeddings_ln                        -> embedding_ln
  TransformerLayer_i/Attention_0/self_attention/{query,key,value}/kernel [D, H, D/H], bias
      [H, D/H]                                 -> layer_i/SelfAttention_0/qkv/{kernel, bias},
                                                  stacked along a new axis (1 / 0) as q, k, v
  TransformerLayer_i/Attention_0/self_attention/out/{kernel [H, D/H, D], bias}
                                               -> layer_i/SelfAttention_0/out
  TransformerLayer_i/Attention_0/attention_output_ln -> layer_i/attention_ln
  TransformerLayer_i/Mlp_0/intermediate_output -> layer_i/mlp_in
  TransformerLayer_i/Mlp_0/layer_output        -> layer_i/mlp_out
  TransformerLayer_i/Mlp_0/layer_output_ln     -> layer_i/mlp_ln
  MlmLayer_0/mlm_dense, MlmLayer_0/mlm_ln      -> head_dense, head_ln
  MlmLayer_0/mlm_bias/bias [V]                 -> head_bias [K] (its first K entries)

Vocabulary (K codes, C classes; maskgit `inference.py` and `configs/maskgit_class_cond_config.py`):
the official ids are codes 0..K-1, class c = K + c, and [MASK] = -1, which `nn.Embed`'s
`jnp.take` wraps to the last row K + C (V = K + C + 1 = 2025). Ours are codes 0..K-1, [MASK] = K
and class c = K + 1 + c (`maskgit.transformer.vocab_size`: also K + 1 + C rows, the same content
in another order). The unconditional input of guidance is [MASK] in the class position (FSQ
Sec. 4.3), so it reads the published [MASK] row; the published model never learnt it there (no
label dropout), which is why the `official` preset samples at guidance scale 0. The official head
scores all V ids and inference keeps `logits[..., :K]`; ours scores the K codes with the same
weights (the tied code rows and the first K biases).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization, traverse_util

from fsq_jax import quantizers
from fsq_jax.config_lib import check
from fsq_jax.train import converted, npz_init
from fsq_jax.train.frozen import frozen_from_variables
from fsq_jax.train.npz_init import (
    CheckpointMismatchError,
    ConversionError,
    Entry,
    Stacked,
    apply_table,
    assign_all,
)
from fsq_jax.train.validate import validate
from maskgit import tasks
from maskgit import tokenizer as tokenizer_lib
from maskgit import transformer as transformer_lib

# google-research/maskgit README: the published ImageNet checkpoints by image size.
URL = "https://storage.googleapis.com/maskgit-public/checkpoints/"
TOKENIZER_FILES = {256: "tokenizer_imagenet256_checkpoint", 512: "tokenizer_imagenet512_checkpoint"}
TRANSFORMER_FILES = {256: "maskgit_imagenet256_checkpoint", 512: "maskgit_imagenet512_checkpoint"}


def read_checkpoint(path: str, origin: str) -> dict[str, np.ndarray]:
    """{'/'-joined name: array} of a flax msgpack checkpoint or an `.npz`, without the leading
    `params/` collection name. CheckpointMismatchError (prefixed by `origin`) when unreadable."""
    if not path or not os.path.isfile(path):
        raise CheckpointMismatchError(f"{origin}: no such file {path!r}")
    if zipfile.is_zipfile(path):
        arrays = npz_init.read_npz(path, origin)
    else:
        with open(path, "rb") as f:
            data = f.read()
        try:
            tree = serialization.msgpack_restore(data)
        except Exception as error:  # msgpack raises several unrelated types on garbage
            raise CheckpointMismatchError(
                f"{origin}: {path!r} is neither a flax msgpack checkpoint nor an .npz "
                f"({type(error).__name__}: {error})") from None
        if not isinstance(tree, dict):
            raise CheckpointMismatchError(f"{origin}: {path!r} holds a {type(tree).__name__}, "
                                          "not a dict of parameters")
        arrays = {name: np.asarray(value) for name, value in
                  traverse_util.flatten_dict(tree, sep="/").items()}
    return {name.removeprefix("params/"): value for name, value in arrays.items()}


# -- tokenizer ---------------------------------------------------------------------------------


def tokenizer_entries(model: ml_collections.ConfigDict, codebook_size: int) -> list[Entry]:
    """The published VQGAN's arrays in creation order, each with its shape and our name.

    `model` is the `model` section (filters, channel_multipliers, num_res_blocks, embedding_dim,
    conv_downsample); the shapes are those of maskgit's VQVAE built from the same values.
    """
    entries: list[Entry] = []

    def conv(path: str, size: int, cin: int, cout: int, bias: bool = True) -> None:
        entries.append(Entry(f"{path}/kernel", (size, size, cin, cout), f"{path}/kernel"))
        if bias:
            entries.append(Entry(f"{path}/bias", (cout,), f"{path}/bias"))

    def norm(path: str, width: int) -> None:
        entries.extend(Entry(f"{path}/{p}", (width,), f"{path}/{p}") for p in ("scale", "bias"))

    def resblock(path: str, cin: int, cout: int) -> None:
        norm(f"{path}/GroupNorm_0", cin)
        conv(f"{path}/Conv_0", 3, cin, cout, bias=False)
        norm(f"{path}/GroupNorm_1", cout)
        conv(f"{path}/Conv_1", 3, cout, cout, bias=False)
        if cin != cout:  # maskgit's shortcut conv reads the block output: [1, 1, out, out]
            conv(f"{path}/Conv_2", 1, cout, cout, bias=False)

    f, mults, blocks = model.filters, tuple(model.channel_multipliers), model.num_res_blocks
    conv("encoder/Conv_0", 3, 3, f, bias=False)
    width, block, convs = f, 0, 1
    for level, mult in enumerate(mults):
        for _ in range(blocks):
            resblock(f"encoder/ResBlock_{block}", width, f * mult)
            width, block = f * mult, block + 1
        if level < len(mults) - 1 and model.conv_downsample:
            conv(f"encoder/Conv_{convs}", 4, width, width)
            convs += 1
    for _ in range(blocks):
        resblock(f"encoder/ResBlock_{block}", width, width)
        block += 1
    norm("encoder/GroupNorm_0", width)
    conv(f"encoder/Conv_{convs}", 1, width, model.embedding_dim)

    entries.append(Entry("quantizer/codebook", (codebook_size, model.embedding_dim),
                         "quantizer/codebook"))

    width = f * mults[-1]
    conv("decoder/Conv_0", 3, model.embedding_dim, width)
    block, convs = 0, 1
    for _ in range(blocks):
        resblock(f"decoder/ResBlock_{block}", width, width)
        block += 1
    for level in reversed(range(len(mults))):
        for _ in range(blocks):
            resblock(f"decoder/ResBlock_{block}", width, f * mults[level])
            width, block = f * mults[level], block + 1
        if level > 0:
            conv(f"decoder/Conv_{convs}", 3, width, width)
            convs += 1
    norm("decoder/GroupNorm_0", width)
    conv(f"decoder/Conv_{convs}", 3, width, 3)
    return entries


def _check_tokenizer_config(config: ml_collections.ConfigDict) -> None:
    """ConversionError naming the field when `config` builds something else than the VQVAE."""
    wanted = {"quantizer.name": (config.quantizer.name, "vq"),
              "model.shortcut": (config.model.shortcut, "output"),
              "model.project_codes": (config.model.project_codes, False),
              "model.image_range": (config.model.image_range, "unit")}
    for field, (have, want) in wanted.items():
        if have != want:
            raise ConversionError(f"config.{field} = {have!r}: the published tokenizer needs "
                                  f"{want!r} (configs/maskgit/tokenizer.py:vq,paper,official)")
    vq = config.quantizer.vq
    for field, want in (("use_ema", False), ("l2_normalize", False)):
        if vq[field] != want:
            raise ConversionError(f"config.quantizer.vq.{field} = {vq[field]!r}: the published "
                                  f"tokenizer's VQ needs {want!r}")


def convert_tokenizer(arrays: Mapping[str, np.ndarray], config: ml_collections.ConfigDict,
                      origin: str, ignore: Sequence[str] = ()) -> dict[str, Any]:
    """Our tokenizer variables `{"params": ...}` from the published tokenizer's arrays.

    Args:
      arrays: `read_checkpoint`'s output.
      config: a tokenizer experiment config (`model` and `quantizer` sections).
      origin: prefix of error messages (e.g. the file).
      ignore: regexes of checkpoint arrays to leave out instead of refusing them.
    """
    _check_tokenizer_config(config)
    size = quantizers.codebook_size(config.quantizer)
    values = apply_table(arrays, tokenizer_entries(config.model, size), origin, ignore=ignore)
    model = tokenizer_lib.build(config)
    side = tokenizer_lib.downsample_factor(config.model)  # one token: shapes only
    image = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    template = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
    extra = sorted(set(template) - {"params"})
    if extra:
        raise ConversionError(f"{origin}: the configured tokenizer keeps state {extra} that the "
                              "published one has none of (check config.quantizer)")
    return {"params": assign_all(template["params"], values, origin)}


# -- transformer -------------------------------------------------------------------------------


def official_vocab_size(codebook_size: int, num_classes: int) -> int:
    """Codes, classes and the [MASK] row (maskgit inference.py: codebook + classes + 1)."""
    return codebook_size + num_classes + 1


def vocabulary_rows(codebook_size: int, num_classes: int, vocab_size: int) -> np.ndarray:
    """int [vocab_size]: for each of our token ids, the official embedding row it takes.

    Codes keep their id, each class c takes row K + c and our [MASK] the official [MASK] row (the
    last, id -1). CheckpointMismatchError when our vocabulary has ids that are none of these (a
    layout this table does not know).
    """
    mask_row = official_vocab_size(codebook_size, num_classes) - 1
    rows = np.full((vocab_size,), -1, np.int64)
    rows[:codebook_size] = np.arange(codebook_size)
    rows[transformer_lib.mask_token_id(codebook_size)] = mask_row
    labels = np.arange(num_classes)
    rows[np.asarray(transformer_lib.class_token_id(labels, codebook_size))] = (
        codebook_size + labels)
    unfilled = np.flatnonzero(rows < 0)
    if unfilled.size:
        raise CheckpointMismatchError(
            f"our transformer vocabulary has {vocab_size} ids; ids {unfilled.tolist()} are no "
            f"code, class or [MASK] of the published {mask_row + 1}-id vocabulary")
    return rows


def transformer_entries(model: ml_collections.ConfigDict, codebook_size: int, num_classes: int,
                        seq_len: int) -> list[Entry | Stacked]:
    """The published transformer's arrays, each with its shape and our parameter (see the module
    docstring). `model` is the `model` section (num_layers, hidden_size, num_heads, mlp_dim)."""
    d, heads, mlp = model.hidden_size, model.num_heads, model.mlp_dim
    head_dim = d // heads
    vocab = official_vocab_size(codebook_size, num_classes)
    rows = vocabulary_rows(codebook_size, num_classes,
                           transformer_lib.vocab_size(codebook_size, num_classes))

    def norm(source: str, target: str) -> list[Entry]:
        return [Entry(f"{source}/{p}", (d,), f"{target}/{p}") for p in ("scale", "bias")]

    def dense(source: str, target: str, cin: int, cout: int) -> list[Entry]:
        return [Entry(f"{source}/kernel", (cin, cout), f"{target}/kernel"),
                Entry(f"{source}/bias", (cout,), f"{target}/bias")]

    table: list[Entry | Stacked] = [
        Entry("Embed_0/word_embeddings/embedding", (vocab, d), "token_embedding/embedding",
              lambda embedding: embedding[rows]),
        Entry("Embed_0/position_embeddings/embedding", (seq_len + 1, d), "position_embedding"),
        *norm("Embed_0/embeddings_ln", "embedding_ln"),
    ]
    for i in range(model.num_layers):
        source, target = f"TransformerLayer_{i}", f"layer_{i}"
        attention = f"{source}/Attention_0/self_attention"
        qkv = tuple(f"{attention}/{name}" for name in ("query", "key", "value"))
        table += [
            Stacked(tuple(f"{p}/kernel" for p in qkv), (d, heads, head_dim),
                    f"{target}/SelfAttention_0/qkv/kernel", axis=1),
            Stacked(tuple(f"{p}/bias" for p in qkv), (heads, head_dim),
                    f"{target}/SelfAttention_0/qkv/bias", axis=0),
            Entry(f"{attention}/out/kernel", (heads, head_dim, d),
                  f"{target}/SelfAttention_0/out/kernel"),
            Entry(f"{attention}/out/bias", (d,), f"{target}/SelfAttention_0/out/bias"),
            *norm(f"{source}/Attention_0/attention_output_ln", f"{target}/attention_ln"),
            *dense(f"{source}/Mlp_0/intermediate_output", f"{target}/mlp_in", d, mlp),
            *dense(f"{source}/Mlp_0/layer_output", f"{target}/mlp_out", mlp, d),
            *norm(f"{source}/Mlp_0/layer_output_ln", f"{target}/mlp_ln"),
        ]
    table += [
        *dense("MlmLayer_0/mlm_dense", "head_dense", d, d),
        *norm("MlmLayer_0/mlm_ln", "head_ln"),
        Entry("MlmLayer_0/mlm_bias/bias", (vocab,), "head_bias",
              lambda bias: bias[:codebook_size]),
    ]
    return table


def convert_transformer(arrays: Mapping[str, np.ndarray], model: ml_collections.ConfigDict,
                        codebook_size: int, num_classes: int, seq_len: int, origin: str,
                        ignore: Sequence[str] = ()) -> dict[str, Any]:
    """Our `MaskedTransformer` params from the published transformer's arrays.

    Args:
      arrays: `read_checkpoint`'s output.
      model: the stage-II `model` section.
      codebook_size, num_classes, seq_len: K, C and N (tokens per image) of the model.
      origin: prefix of error messages; ignore: regexes of arrays to leave out.
    """
    table = transformer_entries(model, codebook_size, num_classes, seq_len)
    values = apply_table(arrays, table, origin, ignore=ignore)
    net = transformer_lib.MaskedTransformer(model, codebook_size, num_classes, seq_len)
    tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    template = jax.eval_shape(lambda t, y: net.init(jax.random.key(0), t, y), tokens, labels)
    return assign_all(template["params"], values, origin)


def load_tokenizer(path: str, config: ml_collections.ConfigDict,
                   ignore: Sequence[str] = ()) -> dict[str, Any]:
    """`convert_tokenizer` of the checkpoint file at `path`."""
    return convert_tokenizer(read_checkpoint(path, path), config, path, ignore)


def load_transformer(path: str, model: ml_collections.ConfigDict, codebook_size: int,
                     num_classes: int, seq_len: int, ignore: Sequence[str] = ()
                     ) -> dict[str, Any]:
    """`convert_transformer` of the checkpoint file at `path`."""
    return convert_transformer(read_checkpoint(path, path), model, codebook_size, num_classes,
                               seq_len, path, ignore)


# -- run directories ---------------------------------------------------------------------------


def write_runs(out: str, tokenizer_path: str, tokenizer_config: ml_collections.ConfigDict,
               transformer_path: str = "",
               transformer_config: ml_collections.ConfigDict | None = None,
               ignore: Sequence[str] = ()) -> dict[str, str]:
    """Converts the published files into run directories `out/tokenizer` (and `out/transformer`).

    Each holds a config.json and one checkpoint (`fsq_jax.train.converted.write_run`), so
    `scripts/evaluate.py` and `scripts/sample.py` run on them as on our own runs. The
    tokenizer's discriminator, which the published file does not hold, keeps its random
    initialisation; optimiser states are fresh.

    Args:
      out: output directory (must not hold these runs yet).
      tokenizer_path, transformer_path: the published files ("" = no transformer).
      tokenizer_config, transformer_config: `configs/maskgit/{tokenizer,transformer}.py:
        vq,paper,official` (with `data.image_size` = the checkpoints' size).
      ignore: regexes of checkpoint arrays to leave out instead of refusing them.

    Returns:
      {"tokenizer": its run directory[, "transformer": its run directory]}.
    """
    runs = {"tokenizer": os.path.join(out, "tokenizer")}
    validate(tokenizer_config)
    variables = load_tokenizer(tokenizer_path, tokenizer_config, ignore)
    params = None
    if transformer_path:  # checked and converted before anything is written
        runs["transformer"] = os.path.join(out, "transformer")
        check(transformer_config, tasks.TransformerTask.config_schema, "config")
        grid = tokenizer_lib.token_grid(tokenizer_config.model, transformer_config.data.image_size)
        params = load_transformer(transformer_path, transformer_config.model,
                                  quantizers.codebook_size(tokenizer_config.quantizer),
                                  tasks.num_classes(transformer_config), grid[0] * grid[1],
                                  ignore)
    task = tasks.TokenizerTask(tokenizer_config)
    size = int(tokenizer_config.data.image_size)
    state = jax.jit(task.init_state)(jax.random.key(tokenizer_config.seed),
                                     {"image": np.zeros((1, size, size, 3), np.uint8)})
    state = state.replace(params={**state.params, "generator": variables["params"]})
    if state.ema_params:
        state = state.replace(ema_params={**state.ema_params, "generator": variables["params"]})
    converted.write_run(runs["tokenizer"], tokenizer_config, state)
    if params is None:
        return runs
    transformer_config.tokenizer_workdir = os.path.abspath(runs["tokenizer"])
    validate(transformer_config)
    frozen = frozen_from_variables(tokenizer_config, "generator", variables)
    task = tasks.TransformerTask(transformer_config, frozen)
    state = jax.jit(task.init_state)(jax.random.key(transformer_config.seed), {})
    state = state.replace(params={"transformer": params})
    if state.ema_params:
        state = state.replace(ema_params={"transformer": params})
    converted.write_run(runs["transformer"], transformer_config, state)
    return runs
