"""Convert torchvision's ImageNet ResNet-50 into the `.npz` the perceptual loss reads.

MAGVIT's perceptual network is an ImageNet ResNet-50 whose weights were never published; the
public stand-in is torchvision's. One command turns its state dict into `.npz` (names kept,
float32, num_batches_tracked dropped) and checks it against the loader's name/shape table:

    curl -LO https://download.pytorch.org/models/resnet50-0676ba61.pth  # IMAGENET1K_V1
    python -m maskgit.perceptual_weights --source resnet50-0676ba61.pth \
        --output ~/.cache/fsq_jax/resnet50_imagenet1k_v1.npz

Then train with `--config.loss.perceptual_weights=~/.cache/fsq_jax/resnet50_imagenet1k_v1.npz`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from fsq_jax.train import npz_init
from maskgit import losses


def convert_state_dict(state_dict: Mapping[str, Any], origin: str = "state dict"
                       ) -> dict[str, np.ndarray]:
    """torch tensors (or arrays) by torchvision name -> float32 numpy arrays by the same name.

    Raises npz_init.CheckpointMismatchError naming the first array that does not fit ResNet-50.
    """
    arrays = {}
    for name, value in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        arrays[name] = array.astype(np.float32)
    npz_init.map_arrays(arrays, losses.resnet50_entries(with_head=True), origin)
    return arrays


def convert(source: str, output: str) -> str:
    """Reads torchvision's `.pth` at `source`, writes the checked `.npz` at `output`."""
    import torch  # only the converter needs PyTorch

    state_dict = torch.load(source, map_location="cpu", weights_only=True)
    arrays = convert_state_dict(state_dict, origin=f"--source {source!r}")
    output = os.path.expanduser(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.savez(output, **arrays)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskgit.perceptual_weights",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help="torchvision ResNet-50 state dict (.pth), e.g. resnet50-0676ba61.pth")
    parser.add_argument("--output", required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    print(f"wrote {convert(args.source, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
