"""Converts published checkpoints into our run directories (config.json + one checkpoint).

MaskGIT (google-research/maskgit's ImageNet tokenizer and transformer) -> OUT/tokenizer and
OUT/transformer, ready for scripts/sample.py and scripts/evaluate.py:

  python scripts/convert_official.py --model maskgit --out runs/official/maskgit256 \
      --tokenizer tokenizer_imagenet256_checkpoint --transformer maskgit_imagenet256_checkpoint

UViM (big_vision's stage I / II `.npz` of depth, panoptic or colorization) -> OUT/stage1 and
OUT/stage2, ready for scripts/evaluate.py:

  python scripts/convert_official.py --model uvim --task depth --out runs/official/uvim_depth \
      --stage1 depth_stageI_params.npz --stage2 depth_stageII_params.npz

The configs default to the `official` presets (`configs/maskgit/*.py:vq,paper,official`,
`configs/uvim/<task>.py:vq,paper,stage{1,2},official`); `--<name>_config file.py:preset` with
`--<name>_config.field=value` overrides replaces them. docs/official_checkpoints.md has the
downloads and the evaluation commands.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from fsq_jax.train import cli

_MODEL = flags.DEFINE_enum("model", None, ["maskgit", "uvim"], "Which published model.",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory of the run directories.",
                           required=True)
_IGNORE = flags.DEFINE_multi_string(
    "ignore", [], "Regex of checkpoint arrays to leave out instead of refusing the file.")
# MaskGIT.
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "tokenizer_imagenet{256,512}_checkpoint.")
_TRANSFORMER = flags.DEFINE_string("transformer", "",
                                   "maskgit_imagenet{256,512}_checkpoint ('' = tokenizer only).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 256, "Image size of the MaskGIT checkpoints "
                                   "(published: 256 or 512).", lower_bound=8)
config_flags.DEFINE_config_file("tokenizer_config", None, "MaskGIT stage-I config (default "
                                "configs/maskgit/tokenizer.py:vq,paper,official).")
config_flags.DEFINE_config_file("transformer_config", None, "MaskGIT stage-II config (default "
                                "configs/maskgit/transformer.py:vq,paper,official).")
# UViM.
_TASK = flags.DEFINE_enum("task", "depth", ["depth", "panoptic", "colorization"], "UViM task.")
_STAGE1 = flags.DEFINE_string("stage1", "", "<task>_stageI_params.npz.")
_STAGE2 = flags.DEFINE_string("stage2", "", "<task>_stageII_params.npz ('' = stage I only).")
config_flags.DEFINE_config_file("stage1_config", None, "UViM stage-I config (default "
                                "configs/uvim/<task>.py:vq,paper,stage1,official).")
config_flags.DEFINE_config_file("stage2_config", None, "UViM stage-II config (default "
                                "configs/uvim/<task>.py:vq,paper,stage2,official).")


def _config(name: str, default: str):
    from fsq_jax import config_lib

    return flags.FLAGS[name].value or config_lib.load(default)


def _maskgit() -> dict[str, str]:
    from maskgit import official

    if not _TOKENIZER.value:
        sys.exit("flag error: --model maskgit needs --tokenizer (and usually --transformer)")
    tokenizer = _config("tokenizer_config", "maskgit/tokenizer.py:vq,paper,official")
    transformer = _config("transformer_config", "maskgit/transformer.py:vq,paper,official")
    for config in (tokenizer, transformer):
        config.data.image_size = _IMAGE_SIZE.value
    return official.write_runs(_OUT.value, _TOKENIZER.value, tokenizer, _TRANSFORMER.value,
                               transformer, _IGNORE.value)


def _uvim() -> dict[str, str]:
    from uvim import official

    if not _STAGE1.value:
        sys.exit("flag error: --model uvim needs --stage1 (and usually --stage2)")
    task = _TASK.value
    stage1 = _config("stage1_config", f"uvim/{task}.py:vq,paper,stage1,official")
    stage2 = _config("stage2_config", f"uvim/{task}.py:vq,paper,stage2,official")
    return official.write_runs(_OUT.value, _STAGE1.value, stage1, _STAGE2.value, stage2,
                               _IGNORE.value)


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax import train
    from fsq_jax.train import npz_init

    try:
        runs = _maskgit() if _MODEL.value == "maskgit" else _uvim()
    except npz_init.CheckpointMismatchError as error:
        sys.exit(f"conversion failed: {error}")
    except train.ConfigError as error:
        sys.exit(f"config error: {error}")
    except (FileExistsError, train.WorkdirError) as error:
        sys.exit(str(error))
    for name, workdir in runs.items():
        print(f"wrote {workdir} ({name})")


if __name__ == "__main__":
    cli.run(main)
