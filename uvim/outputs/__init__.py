"""UViM's dense outputs: what each task (depth, colorization, panoptic) predicts per pixel.

A `DenseOutput` encodes the task output as the stage-I model's target channels, and owns its loss,
prediction, metric and picture. The training stages (`uvim.tasks`) are generic over it;
`config.output.name` picks it.
"""

from __future__ import annotations

import ml_collections

from uvim.outputs.base import DenseOutput, Metric
from uvim.outputs.colorization import ColorizationConfig, ColorizationOutput
from uvim.outputs.depth import DepthConfig, DepthOutput
from uvim.outputs.panoptic import PanopticConfig, PanopticOutput

OUTPUTS: dict[str, type[DenseOutput]] = {
    "depth": DepthOutput,
    "colorization": ColorizationOutput,
    "panoptic": PanopticOutput,
}
# The `output` section's schema: one of these, told apart by `name`.
OutputConfig = DepthConfig | ColorizationConfig | PanopticConfig


def build_output(config: ml_collections.ConfigDict | OutputConfig) -> DenseOutput:
    """The dense output named by `config.name` (one of OUTPUTS), from a config section or its
    checked schema."""
    name = getattr(config, "name", None)
    if name not in OUTPUTS:
        raise ValueError(f"output.name must be one of {sorted(OUTPUTS)}, got {name!r}")
    return OUTPUTS[name](config)


__all__ = [
    "OUTPUTS",
    "ColorizationOutput",
    "DenseOutput",
    "DepthOutput",
    "Metric",
    "OutputConfig",
    "PanopticOutput",
    "build_output",
]
