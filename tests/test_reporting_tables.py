"""The paper-layout tables: our numbers beside the paper's, with sources."""

from fsq_jax import config_lib
from fsq_jax.reporting import tables


def test_maskgit_table_puts_ours_beside_the_papers():
    ours = {
        "vq": tables.RunResult(
            {"fid": 31.234, "precision": 0.5, "recall": 0.25, "usage": 0.42},
            config="configs/maskgit/transformer.py:vq,tiny",
            checkpoint="runs/demo/vq/transformer/checkpoints/300",
        ),
        "fsq": tables.RunResult({"fid": 29.0, "precision": 0.61, "usage": 1.0}),
    }
    text = tables.maskgit_table(ours, title="MaskGIT")
    lines = text.splitlines()
    assert lines[0] == "### MaskGIT"
    assert lines[2] == ("| model | FID ↓ | precision ↑ | recall ↑ | codebook usage | source |")
    assert lines[4] == (
        "| MaskGIT VQ (ours) | 31.23 | 0.500 | 0.250 | 42.0% | "
        "`configs/maskgit/transformer.py:vq,tiny`<br>`runs/demo/vq/transformer/checkpoints/300` |"
    )
    paper_source = "paper, ImageNet 256²"
    assert lines[5] == f"| MaskGIT VQ (paper) | 4.51 | 0.860 | 0.465 | 81.0% | {paper_source} |"
    # A missing metric prints as a dash, never as a made-up number.
    assert lines[6] == "| MaskGIT FSQ (ours) | 29.00 | 0.610 | — | 100.0% | — |"
    assert lines[7] == f"| MaskGIT FSQ (paper) | 4.53 | 0.864 | 0.453 | 100.0% | {paper_source} |"


def test_uvim_table_rows_ablations_and_paper_values():
    ours = {
        ("depth", "vq"): tables.RunResult({"value": 0.61, "usage": 0.35}, config="a"),
        ("depth", "fsq"): tables.RunResult({"value": 0.58, "usage": 0.97}, config="b"),
        ("panoptic_nocontext", "fsq"): tables.RunResult({"value": 30.5}),
    }
    text = tables.uvim_table(ours)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert rows["NYU Depth v2 (RMSE ↓)"] == (
        "| NYU Depth v2 (RMSE ↓) | 0.610 (usage 35.0%) | 0.580 (usage 97.0%) | "
        "0.468 ± 0.012 (usage 99.0%) | 0.473 ± 0.012 (usage 99.0%) | `a` `b` |"
    )
    assert rows["VQ without splitting (RMSE ↓)"].split("|")[4].strip() == "0.490 (usage 0.8%)"
    assert rows["panoptic without image context (PQ ↑)"].split("|")[3].strip() == "30.500"
    assert rows["colorization (FID ↓)"].split("|")[4:6] == [" 16.90 ", " 17.55 "]


def test_paper_levels_match_codebook_targets():
    # Table 1: the product of the levels is within about 10% of the target size.
    for log2_size, levels in config_lib.RECOMMENDED_LEVELS.items():
        product = 1
        for level in levels:
            product *= level
        assert 0.9 * 2**log2_size <= product <= 1.1 * 2**log2_size, (log2_size, levels)
