"""The paper's published numbers, so every report and table can print ours beside them.

Source: Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple" (ICLR 2024), the MaskGIT
table (ImageNet 256x256, 50k samples, ADM evaluation suite) and Table 2 (UViM, mean of 3 runs).
"""

from __future__ import annotations

from types import MappingProxyType

# MaskGIT on ImageNet 256x256: FID, precision, recall, codebook usage (fraction).
MASKGIT = MappingProxyType(
    {
        "vq": MappingProxyType({"fid": 4.509, "precision": 0.860, "recall": 0.465, "usage": 0.81}),
        "fsq": MappingProxyType(
            {"fid": 4.534, "precision": 0.864, "recall": 0.453, "usage": 1.00}
        ),
    }
)
MASKGIT_OFFICIAL_CHECKPOINT_FID = 4.916

# UViM (Table 2). Metric per task: depth RMSE (lower is better), panoptic PQ (higher),
# colorization FID-5k (lower). Usage is a fraction; None where the paper gives none.
UVIM = MappingProxyType(
    {
        ("depth", "vq"): MappingProxyType({"value": 0.468, "std": 0.012, "usage": 0.99}),
        ("depth", "fsq"): MappingProxyType({"value": 0.473, "std": 0.012, "usage": 0.99}),
        ("depth", "vq_nosplit"): MappingProxyType({"value": 0.490, "std": None, "usage": 0.0078}),
        ("panoptic", "vq"): MappingProxyType({"value": 43.4, "std": None, "usage": None}),
        ("panoptic", "fsq"): MappingProxyType({"value": 43.2, "std": None, "usage": 1.00}),
        ("panoptic_nocontext", "vq"): MappingProxyType(
            {"value": 39.0, "std": None, "usage": None}
        ),
        ("panoptic_nocontext", "fsq"): MappingProxyType(
            {"value": 40.2, "std": None, "usage": None}
        ),
        ("colorization", "vq"): MappingProxyType({"value": 16.90, "std": None, "usage": None}),
        ("colorization", "fsq"): MappingProxyType({"value": 17.55, "std": None, "usage": None}),
    }
)

# The metric each UViM task reports, and whether lower is better.
UVIM_METRICS = MappingProxyType(
    {
        "depth": ("RMSE", True),
        "panoptic": ("PQ", False),
        "panoptic_nocontext": ("PQ", False),
        "colorization": ("FID", True),
    }
)

# The setting behind each of the paper's rows, so a table can show ours beside it for what it is:
# dataset, resolution (pixels per side), training length and codebook size. MaskGIT: paper Sec. 4.1
# (stage I 1M steps at batch 512, stage II 2.5M steps at batch 256; VQ 1024 codes, FSQ [8,5,5,5]).
# UViM: paper Sec. 4.2 (VQ 4096 codes, FSQ [7,5,5,5,5] = 4375; "settings as UViM"), training
# lengths from UViM's big_vision configs (configs/proj/uvim/vqvae_*.py, train_*_pretrained.py).
MASKGIT_SETTING = MappingProxyType(
    {"dataset": "ImageNet", "resolution": 256, "steps": "1M + 2.5M",
     "codebook_size": MappingProxyType({"vq": 1024, "fsq": 1000})}
)
UVIM_SETTINGS = MappingProxyType(
    {
        task: MappingProxyType({"dataset": dataset, "resolution": 512, "steps": steps,
                                "codebook_size": MappingProxyType({"vq": 4096, "fsq": 4375})})
        for task, dataset, steps in (
            ("depth", "NYU Depth v2", "200 + 50 epochs"),
            ("panoptic", "COCO panoptic", "1000 + 200 epochs"),
            ("panoptic_nocontext", "COCO panoptic", "1000 + 200 epochs"),
            ("colorization", "ImageNet", "100 + 50 epochs"),
        )
    }
)
