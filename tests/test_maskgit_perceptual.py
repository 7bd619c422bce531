"""MAGVIT's ResNet-50 perceptual loss against PyTorch, with torchvision's weight layout.

torchvision is not installed here, so the reference is a PyTorch ResNet-50 written below with
torchvision's module names (hence its exact state-dict names and shapes) and random weights. The
converter turns its saved state dict into the `.npz`; the JAX network must then give the torch
network's features and logits, and the loss MAGVIT's value (videogvt/train_lib/losses.py:
bilinear resize to 224, mean squared difference of the logits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.maskgit import tokenizer as tokenizer_configs
from fsq_jax.train import npz_init
from maskgit import losses, perceptual_weights

torch = pytest.importorskip(
    "torch", reason="PARITY TESTS NOT RUN: torch is missing; `make extras` installs it"
)
nn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.torch


class Bottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: stride on the 3x3 convolution)."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.downsample = None
        if stride != 1 or in_channels != 4 * width:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, 4 * width, 1, stride=stride, bias=False),
                nn.BatchNorm2d(4 * width))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """torchvision.models.resnet50's structure and parameter names."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        for stage, blocks in enumerate((3, 4, 6, 3)):
            width = 64 * 2**stage
            layers = []
            for block in range(blocks):
                stride = 2 if (block == 0 and stage > 0) else 1
                layers.append(Bottleneck(in_channels, width, stride))
                in_channels = 4 * width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return x, self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = ResNet50().eval()
    with torch.no_grad():  # BatchNorm statistics away from the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def weights_path(reference, tmp_path_factory):
    directory = tmp_path_factory.mktemp("resnet50")
    source = directory / "resnet50.pth"
    torch.save(reference.state_dict(), source)
    output = directory / "resnet50.npz"
    assert perceptual_weights.main(["--source", str(source), "--output", str(output)]) == 0
    return str(output)


def _torch_outputs(model, images: np.ndarray):
    """images [B, H, W, 3] in [-1, 1] -> MAGVIT's preprocessing (resize to 224) -> torchvision's
    normalisation -> (feature map [B, 7, 7, 2048], logits [B, 1000])."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    if x.shape[-1] != 224:
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        features, logits = model(((x + 1) / 2 - mean) / std)
    return features.permute(0, 2, 3, 1).numpy(), logits.numpy()


def test_converted_weights_give_the_reference_features(reference, weights_path):
    with np.load(weights_path) as data:
        names = set(data.files)
    assert names == set(losses.resnet50_shapes())  # num_batches_tracked dropped, nothing else
    params = losses.load_resnet50(weights_path)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    features, logits = jax.jit(losses.resnet50_apply)(params, jnp.asarray(images))
    want_features, want_logits = _torch_outputs(reference, images)
    assert features.shape == (2, 7, 7, 2048) and logits.shape == (2, 1000)
    np.testing.assert_allclose(np.asarray(features), want_features, rtol=1e-4,
                               atol=1e-4 * np.abs(want_features).max())
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4,
                               atol=1e-4 * np.abs(want_logits).max())


@pytest.mark.parametrize("size, on_logits", [
    (64, True),  # upsampled to 224
    (256, True),  # downsampled to 224, with antialiasing on both sides
    (64, False),  # MAGVIT's perceptual_loss_on_logit=False: the 7x7x2048 feature map
])
def test_loss_is_magvits_mean_squared_difference(reference, weights_path, size, on_logits):
    config = tokenizer_configs.get_config("fsq,tiny").loss
    config.update(perceptual_network="resnet50", perceptual_weights=weights_path,
                  perceptual_on_logits=on_logits)
    network, params = losses.load_perceptual(config)
    rng = np.random.default_rng(size)
    real = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    fake = np.clip(real + rng.normal(0, 0.3, real.shape), -1, 1).astype(np.float32)
    loss = jax.jit(lambda a, b: losses.perceptual_loss(network, params, a, b))
    index = 1 if on_logits else 0
    want = np.mean((_torch_outputs(reference, real)[index].astype(np.float64)
                    - _torch_outputs(reference, fake)[index]) ** 2)
    np.testing.assert_allclose(float(loss(real, fake)), want, rtol=1e-4)
    assert float(loss(real, real)) == 0.0


def test_converter_and_loader_refuse_other_networks(reference, tmp_path):
    state = {k: v for k, v in reference.state_dict().items()}
    del state["layer3.5.bn2.running_var"]
    with pytest.raises(npz_init.CheckpointMismatchError,
                       match=r"missing array 'layer3.5.bn2.running_var'"):
        perceptual_weights.convert_state_dict(state)
    state = dict(reference.state_dict(), **{"fc.weight": torch.zeros(10, 2048)})
    with pytest.raises(npz_init.CheckpointMismatchError,
                       match=r"'fc.weight' has shape \(10, 2048\), expected \(1000, 2048\)"):
        perceptual_weights.convert_state_dict(state)
    # A ResNet-101 file has blocks ResNet-50 lacks.
    arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
    arrays["layer3.6.conv1.weight"] = np.zeros((256, 1024, 1, 1), np.float32)
    path = tmp_path / "resnet101.npz"
    np.savez(path, **arrays)
    config = tokenizer_configs.get_config("fsq,tiny").loss
    config.update(perceptual_network="resnet50", perceptual_weights=str(path))
    with pytest.raises(ValueError, match=r"loss.perceptual_weights = .*unexpected array "
                                         r"'layer3.6.conv1.weight'"):
        losses.load_perceptual(config)
