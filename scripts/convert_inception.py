"""Convert the FID InceptionV3 weights to `.npz`: `python -m fsq_jax.eval.inception convert`.

    python scripts/convert_inception.py [--source PATH.pt|PATH.pth] [--cache-dir DIR]
"""

import sys

from fsq_jax.eval import inception

if __name__ == "__main__":
    sys.exit(inception.main(["convert", *sys.argv[1:]]))
