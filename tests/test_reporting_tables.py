"""The paper-layout tables: the paper's rows, and ours beside them with their setting."""

from fsq_jax import config_lib
from fsq_jax.reporting import paper, tables

SCENES = tables.Setting("procedural scenes", 32, "1,000 + 1,200", 240)


def test_maskgit_table_puts_every_run_beside_the_papers_with_its_setting():
    ours = [
        ("vq", tables.RunResult(
            {"fid": 31.234, "precision": 0.5, "recall": 0.25, "usage": 0.42},
            config="runs/a/config.json", checkpoint="runs/a/checkpoints/300",
            setting=tables.Setting("procedural scenes", 32, "1,000 + 1,200", 256))),
        ("fsq", tables.RunResult({"fid": 29.0, "precision": 0.61, "usage": 1.0}, setting=SCENES)),
        ("fsq", tables.RunResult({"fid": 12.5}, config="runs/c/config.json", others=2,
                                 setting=tables.Setting("folder flowers", 64, "50 + 60", 1000))),
    ]
    lines = tables.maskgit_table(ours, title="MaskGIT").splitlines()
    assert lines[0] == "### MaskGIT"
    assert lines[2] == ("| model | dataset | resolution | steps (I + II) | codebook size | FID ↓ | "
                        "precision ↑ | recall ↑ | codebook usage | source |")
    assert lines[4:] == [
        "| MaskGIT VQ (paper) | ImageNet | 256² | 1M + 2.5M | 1024 | 4.51 | 0.860 | 0.465 | "
        "81.0% | the paper |",
        "| MaskGIT VQ (ours) | procedural scenes | 32² | 1,000 + 1,200 | 256 | 31.23 | 0.500 | "
        "0.250 | 42.0% | `runs/a/config.json`<br>`runs/a/checkpoints/300` |",
        "| MaskGIT FSQ (paper) | ImageNet | 256² | 1M + 2.5M | 1000 | 4.53 | 0.864 | 0.453 | "
        "100.0% | the paper |",
        # A missing metric prints as a dash, never as a made-up number.
        "| MaskGIT FSQ (ours) | procedural scenes | 32² | 1,000 + 1,200 | 240 | 29.00 | 0.610 | "
        "— | 100.0% | — |",
        # Both FSQ runs are shown; a collapsed row says how many runs it stands for.
        "| MaskGIT FSQ (ours) | folder flowers | 64² | 50 + 60 | 1000 | 12.50 | — | — | — | "
        "`runs/c/config.json`<br>newest of 3 runs of this setting |",
    ]


def test_maskgit_table_accepts_a_dict_and_other_quantizers():
    text = tables.maskgit_table({"lfq": tables.RunResult({"fid": 7.0})})
    assert text.splitlines()[-1] == "| MaskGIT lfq (ours) | — | — | — | — | 7.00 | — | — | — | — |"


def test_uvim_table_rows_ablations_and_paper_values():
    ours = [
        (("depth", "vq"), tables.RunResult({"value": 0.61, "usage": 0.35}, config="a",
                                           setting=tables.Setting("procedural scenes", 32,
                                                                  "1,000 + 1,000", 1024))),
        (("depth", "fsq"), tables.RunResult({"value": 0.58, "usage": 0.97}, config="b")),
        (("depth", "fsq"), tables.RunResult({"value": 0.57, "usage": 0.99}, config="c")),
        (("panoptic_nocontext", "fsq"), tables.RunResult({"value": 30.5})),
    ]
    lines = tables.uvim_table(ours).splitlines()
    assert lines[0] == ("| task (metric) | quantizer | dataset | resolution | steps (I + II) | "
                        "codebook size | value | codebook usage | source |")
    depth = [line for line in lines if line.startswith("| depth (RMSE ↓)")]
    assert depth == [
        "| depth (RMSE ↓) | VQ (paper) | NYU Depth v2 | 512² | 200 + 50 epochs | 4096 | "
        "0.468 ± 0.012 | 99.0% | the paper |",
        "| depth (RMSE ↓) | VQ (ours) | procedural scenes | 32² | 1,000 + 1,000 | 1024 | 0.610 | "
        "35.0% | `a` |",
        "| depth (RMSE ↓) | FSQ (paper) | NYU Depth v2 | 512² | 200 + 50 epochs | 4375 | "
        "0.473 ± 0.012 | 99.0% | the paper |",
        "| depth (RMSE ↓) | FSQ (ours) | — | — | — | — | 0.580 | 97.0% | `b` |",
        "| depth (RMSE ↓) | FSQ (ours) | — | — | — | — | 0.570 | 99.0% | `c` |",
    ]
    nosplit = next(line for line in lines if "VQ, no splitting (paper)" in line)
    assert nosplit.split(" | ")[6:8] == ["0.490", "0.8%"]
    nocontext = next(line for line in lines if "without image context" in line
                     and "FSQ (ours)" in line)
    assert nocontext.split(" | ")[6] == "30.500"
    colorization = [line.split(" | ")[6] for line in lines if line.startswith("| colorization")]
    assert colorization == ["16.90", "17.55"]
    # No row of ours is labelled with a dataset it was not trained on.
    assert all("NYU" not in line for line in lines if "(ours)" in line)


def test_paper_levels_match_codebook_targets():
    # Table 1: the product of the levels is within about 10% of the target size.
    for log2_size, levels in config_lib.RECOMMENDED_LEVELS.items():
        product = 1
        for level in levels:
            product *= level
        assert 0.9 * 2**log2_size <= product <= 1.1 * 2**log2_size, (log2_size, levels)


def test_paper_codebook_sizes_are_the_levels_products():
    assert paper.UVIM_SETTINGS["depth"]["codebook_size"]["fsq"] == 7 * 5 * 5 * 5 * 5
    assert paper.MASKGIT_SETTING["codebook_size"]["fsq"] == 8 * 5 * 5 * 5
