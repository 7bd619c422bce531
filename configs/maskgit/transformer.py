"""Stage II of MaskGIT: the class-conditional masked transformer. `get_config("fsq,tiny")` etc.

The tokens come from a finished stage-I run (`tokenizer_workdir`, by default the matching
`configs/maskgit/tokenizer.py` preset's conventional workdir). Sources of the paper numbers: the
FSQ paper (2.5M steps at batch 256, masking ratio floor 0.45, label dropout 10%, guidance weight
0.1 for VQ and 0.2 for FSQ) and google-research/maskgit `configs/maskgit_class_cond_config.py`
(architecture, optimiser, label smoothing, choice temperature). The flag `official` (with
`vq,paper`) describes the published MaskGIT transformer checkpoint (docs/official_checkpoints.md).
"""

from __future__ import annotations

import ml_collections

from fsq_jax import config_lib as cl


def default_tokenizer_workdir(quantizer: str, size: str) -> str:
    """Conventional stage-I workdir of a preset: runs/maskgit/<quantizer>_<size>/tokenizer."""
    return f"runs/maskgit/{quantizer}_{size}/tokenizer"


def _paper(config: ml_collections.ConfigDict) -> None:
    config.data.source = "tfds:imagenet2012"
    config.data.image_size = 256
    config.batch_size = 256  # FSQ paper / MaskGIT
    config.eval_batch_size = 64
    config.total_steps = 2_500_000  # FSQ paper: 2.5M steps
    config.ema_decay = 0.999  # MaskGIT base_config polyak_decay
    config.log_every = 100
    config.eval_every = 10_000
    config.images_every = 10_000
    config.checkpoint_every = 10_000
    config.model.dtype = "bfloat16"
    config.evaluators.num_images = 50_000  # FSQ paper: 50k samples


def _official(config: ml_collections.ConfigDict) -> None:
    """The published maskgit_imagenet{256,512}_checkpoint (scripts/convert_official.py) and how
    the FSQ paper scored it (FID 4.916, docs/official_checkpoints.md): MaskGIT's decoding
    without guidance (the released model never saw a dropped label; MaskGIT's config has no
    label dropout), in float32 as inference.py runs it."""
    config.model.dtype = "float32"
    config.sampling.guidance_scale = 0.0
    config.masking.label_dropout = 0.0


def _tiny(config: ml_collections.ConfigDict) -> None:
    config.num_classes = 0  # the procedural scenes' classes
    config.data.image_size = 32
    config.batch_size = 32
    config.eval_batch_size = 64
    config.total_steps = 3_000
    config.log_every = 100
    config.eval_every = 1_000
    config.images_every = 1_000
    config.checkpoint_every = 1_000
    config.eval_steps = 2
    config.model.update(num_layers=4, hidden_size=64, num_heads=4, mlp_dim=256, dropout_rate=0.1)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=200, schedule="cosine",
                            end_learning_rate=1e-5)
    config.evaluators.num_images = 500
    config.evaluators.reference_images = 500  # of the 100k train scenes: cheap on a CPU


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The transformer experiment for `arg` = '<quantizer>,<tiny|paper>' (default fsq,tiny)."""
    arg = cl.parse_arg(arg, quantizer=cl.Choice("fsq", cl.names()),
                       size=cl.Choice("tiny", ("tiny", "paper")), official=False)
    if arg.official and (arg.quantizer, arg.size) != ("vq", "paper"):
        raise ValueError(f"config arg: 'official' is the released VQ transformer; use "
                         f"'vq,paper,official' ({arg})")
    # No EMA by default: the tiny preset's 1,200-3,000 steps are too few for MaskGIT's 0.999
    # (the EMA, not debiased, would still hold 0.999^1200 = 30% of the initial weights).
    config = cl.loop(task="maskgit.tasks:TransformerTask", ema_decay=0.0)
    config.tokenizer_workdir = default_tokenizer_workdir(arg.quantizer, arg.size)
    config.num_classes = 1000  # 0 = from the data source
    # MaskGIT's class-conditional transformer (maskgit_class_cond_config.py): 24 layers, width
    # 768, 16 heads, MLP 3072, dropout 0.1 on the hidden states and, as inference.py builds it
    # (attention_probs_dropout_prob = dropout_rate), 0.1 on the attention weights.
    config.model = ml_collections.ConfigDict({
        "num_layers": 24, "hidden_size": 768, "num_heads": 16, "mlp_dim": 3072,
        "dropout_rate": 0.1, "attention_dropout": 0.1, "initializer_range": 0.02,
        "dtype": "float32",  # compute dtype; params stay float32
        # Attention kernel: "xla" (any backend) or "cudnn" (fused flash attention, GPU with
        # bfloat16, no attention-weight dropout); `benchmarks/maskgit.py --variants
        # attention=cudnn,attention_dropout=0.0` compares them.
        "attention": "xla",
        # Dropout bits: "threefry" (jax's default) or "rbg" (XLA's RngBitGenerator).
        "dropout_rng": "threefry",
        # What each layer keeps for the backward pass: none | dots | block
        # (maskgit/transformer.py; benchmarks/memory.py measures them).
        "remat": "none"})
    config.masking = ml_collections.ConfigDict({
        "schedule": "cosine",
        "min_ratio": 0.45,  # FSQ paper: at least 45% of the tokens masked in training
        # FSQ paper Sec. 4.3: 10% of the class tokens replaced by [MASK] (for guidance).
        "label_dropout": 0.1,
    })
    config.loss = ml_collections.ConfigDict({"label_smoothing": 0.1})  # MaskGIT
    # Pre-tokenised training tokens (token_cache.dir = a directory, built on first use): the
    # frozen encoder then runs once per training image instead of inside every step.
    config.token_cache = ml_collections.ConfigDict({"dir": "", "passes": 1, "batch_size": 256})
    # MaskGIT's decoding: 12 steps, cosine schedule, choice temperature 4.5. FSQ paper: best
    # guidance weight 0.2 for FSQ, 0.1 for VQ (logits = c + w * (c - u)).
    config.sampling = ml_collections.ConfigDict({
        "num_steps": 12, "schedule": "cosine", "choice_temperature": 4.5, "temperature": 1.0,
        "guidance_scale": 0.1 if arg.quantizer == "vq" else 0.2})
    # MaskGIT: AdamW-style (b1 0.9, b2 0.96, weight decay 4.5e-2), lr 1e-4, 5000 warm-up steps.
    config.optimizer = cl.optimizer(name="adamw", learning_rate=1e-4, b1=0.9, b2=0.96,
                                    weight_decay=4.5e-2, warmup_steps=5_000, schedule="constant")
    config.evaluators = ml_collections.ConfigDict({
        "fid": True,  # sampling FID, precision, recall (needs `make inception`)
        "num_images": 1000,
        "batch_size": 50,
        # FID reference (FSQ paper: ADM's suite, statistics of the whole ImageNet train set):
        # "" = statistics of the train split computed here once, unaugmented, cached (precision
        # and recall against its first num_images); or an ADM reference batch .npz (its mu/sigma,
        # precision/recall against its arr_0), e.g. VIRTUAL_imagenet256_labeled.npz.
        "reference": "",
        "reference_images": 0,  # train images in the statistics (0 = the whole split)
    })
    (_paper if arg.size == "paper" else _tiny)(config)
    if arg.official:
        _official(config)
    return config
