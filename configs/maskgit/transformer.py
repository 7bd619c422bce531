"""Stage II of MaskGIT: the class-conditional masked transformer. `get_config("fsq,tiny")` etc.

The tokens come from a finished stage-I run (`tokenizer_workdir`, by default the matching
`configs/maskgit/tokenizer.py` preset's conventional workdir). Sources of the paper numbers: the
FSQ paper (2.5M steps at batch 256, masking ratio floor 0.45, label dropout 10%, guidance weight
0.1 for VQ and 0.2 for FSQ) and google-research/maskgit `configs/maskgit_class_cond_config.py`
(architecture, optimiser, label smoothing, choice temperature).
"""

from __future__ import annotations

import ml_collections

from configs.maskgit.tokenizer import parse_arg


def default_tokenizer_workdir(quantizer: str, size: str) -> str:
    """Conventional stage-I workdir of a preset: runs/maskgit/<quantizer>_<size>/tokenizer."""
    return f"runs/maskgit/{quantizer}_{size}/tokenizer"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The transformer experiment for `arg` = '<fsq|vq>,<tiny|paper>'."""
    from fsq_jax import train
    from fsq_jax.train import optim
    from maskgit import decoding, token_cache, transformer

    quantizer, size = parse_arg(arg)
    config = train.default_config()
    config.task = "maskgit.tasks:TransformerTask"
    config.tokenizer_workdir = default_tokenizer_workdir(quantizer, size)
    config.num_classes = 1000  # 0 = from the data source (fsq_jax.data.num_classes)
    config.model = transformer.default_model_config()
    config.masking = ml_collections.ConfigDict(
        {
            "schedule": "cosine",
            "min_ratio": 0.45,  # FSQ paper: at least 45% of the tokens masked in training
            "label_dropout": 0.1,  # FSQ paper: labels dropped 10% of the time (for guidance)
        }
    )
    config.loss = ml_collections.ConfigDict({"label_smoothing": 0.1})  # MaskGIT
    # Pre-tokenised training tokens (token_cache.dir = a directory, built on first use): the
    # frozen encoder then runs once per training image instead of inside every step.
    config.token_cache = token_cache.default_config()
    config.sampling = decoding.default_config()
    # FSQ paper: best guidance weight 0.2 for FSQ, 0.1 for VQ (logits = c + w * (c - u)).
    config.sampling.guidance_scale = 0.2 if quantizer == "fsq" else 0.1

    opt = optim.default_config()
    # MaskGIT: AdamW-style (b1 0.9, b2 0.96, weight decay 4.5e-2), lr 1e-4, 5000 warm-up steps.
    opt.name = "adamw"
    opt.learning_rate = 1e-4
    opt.b1 = 0.9
    opt.b2 = 0.96
    opt.weight_decay = 4.5e-2
    opt.warmup_steps = 5_000
    opt.schedule = "constant"
    config.optimizer = opt
    config.evaluators = ml_collections.ConfigDict(
        {
            "fid": True,  # sampling FID, precision, recall (needs `make inception`)
            "num_images": 1000,
            "batch_size": 50,
        }
    )

    if size == "paper":
        config.data.source = "tfds:imagenet2012"
        config.data.image_size = 256
        config.batch_size = 256  # FSQ paper / MaskGIT
        config.eval_batch_size = 64
        config.total_steps = 2_500_000  # FSQ paper: 2.5M steps
        config.ema_decay = 0.0
        config.log_every = 100
        config.eval_every = 10_000
        config.images_every = 10_000
        config.checkpoint_every = 10_000
        config.model.dtype = "bfloat16"
        config.evaluators.num_images = 50_000  # FSQ paper: 50k samples
    else:
        config.num_classes = 0  # the procedural scenes' classes
        config.data.image_size = 32
        config.batch_size = 32
        config.eval_batch_size = 64
        config.total_steps = 3_000
        config.ema_decay = 0.0
        config.log_every = 100
        config.eval_every = 1_000
        config.images_every = 1_000
        config.checkpoint_every = 1_000
        config.eval_steps = 2
        config.model.num_layers = 4
        config.model.hidden_size = 64
        config.model.num_heads = 4
        config.model.mlp_dim = 256
        config.model.dropout_rate = 0.1
        opt.learning_rate = 1e-3
        opt.warmup_steps = 200
        opt.schedule = "cosine"
        opt.end_learning_rate = 1e-5
        config.evaluators.num_images = 500
    return config
