"""Convert torchvision's ResNet-50 for the perceptual loss: `python -m maskgit.perceptual_weights`.

    python scripts/convert_resnet50.py --source resnet50-0676ba61.pth --output resnet50.npz
"""

import sys

from maskgit import perceptual_weights

if __name__ == "__main__":
    sys.exit(perceptual_weights.main(sys.argv[1:]))
