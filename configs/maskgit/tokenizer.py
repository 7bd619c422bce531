"""Stage I of MaskGIT: the VQGAN / FSQ-GAN tokenizer. `get_config("fsq,tiny")` and friends.

Presets: quantizer `fsq` | `vq`, size `tiny` (32x32 procedural scenes, trains in minutes on a
CPU) | `paper` (MaskGIT's VQGAN on ImageNet 256x256, as in the FSQ paper, Sec. 4.1 / App. A).
Sources of the paper numbers: the FSQ paper (stage I 1M steps at batch 512; FSQ [8,5,5,5] vs.
VQ 1024 codes) and google-research/maskgit `configs/vqgan_config.py` (everything else).
"""

from __future__ import annotations

import ml_collections

QUANTIZERS = ("fsq", "vq")
SIZES = ("tiny", "paper")


def parse_arg(arg: str | None) -> tuple[str, str]:
    """'fsq,tiny' -> ('fsq', 'tiny'); either part may be omitted (defaults fsq, tiny)."""
    quantizer, size = "fsq", "tiny"
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        if part in QUANTIZERS:
            quantizer = part
        elif part in SIZES:
            size = part
        else:
            raise ValueError(
                f"config arg {arg!r}: unknown preset {part!r}; use a quantizer from {QUANTIZERS} "
                f"and a size from {SIZES}, e.g. 'fsq,tiny'"
            )
    return quantizer, size


def quantizer_config(quantizer: str, size: str) -> ml_collections.ConfigDict:
    """FSQ [8,5,5,5] / VQ 1024 codes (paper), FSQ [8,6,5] / VQ 256 codes (tiny, ~2^8)."""
    from fsq_jax import quantizers

    config = quantizers.default_config(quantizer)
    if quantizer == "fsq":
        # Paper Table 1: [8,5,5,5] for 2^10 (1000 codes); [8,6,5] for 2^8 in the tiny preset.
        config.levels = (8, 5, 5, 5) if size == "paper" else (8, 6, 5)
    else:
        # MaskGIT: 1024 codes of dim 256, commitment 0.25, entropy loss 0.1 at temperature 0.01.
        config.codebook_size = 1024 if size == "paper" else 256
        config.dim = 256 if size == "paper" else 32
        config.beta = 0.25
        config.entropy_weight = 0.1
        config.entropy_temperature = 0.01
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The tokenizer experiment for `arg` = '<fsq|vq>,<tiny|paper>'."""
    from fsq_jax import train
    from fsq_jax.train import optim
    from maskgit import discriminator, losses, tokenizer

    quantizer, size = parse_arg(arg)
    config = train.default_config()
    config.task = "maskgit.tasks:TokenizerTask"
    config.model = tokenizer.default_model_config()
    config.quantizer = quantizer_config(quantizer, size)
    config.discriminator = discriminator.default_config()
    config.loss = losses.default_config()

    generator, critic = optim.default_config(), optim.default_config()
    # MaskGIT vqgan_config: Adam(b1=0, b2=0.99), lr 1e-4 for both, constant after warm-up.
    for opt in (generator, critic):
        opt.name = "adam"
        opt.learning_rate = 1e-4
        opt.b1 = 0.0
        opt.b2 = 0.99
        opt.schedule = "constant"
    config.optimizers = ml_collections.ConfigDict({"generator": generator, "discriminator": critic})
    config.evaluators = ml_collections.ConfigDict(
        {
            "fid": True,  # reconstruction FID (needs the Inception weights, `make inception`)
            "usage": True,  # codebook usage over the evaluation images
            "num_images": 1000,
            "batch_size": 50,
            "out_dir": "",  # where the usage histogram PNG and counts go ("" = not written)
        }
    )

    if size == "paper":
        config.data.source = "tfds:imagenet2012"
        config.data.image_size = 256
        config.batch_size = 512  # FSQ paper: stage I at batch 512 (MaskGIT's config: 256)
        config.eval_batch_size = 128
        config.total_steps = 1_000_000  # FSQ paper / MaskGIT: 1M steps
        config.ema_decay = 0.999  # MaskGIT base_config polyak_decay
        config.log_every = 100
        config.eval_every = 10_000  # MaskGIT eval_every_steps
        config.images_every = 10_000
        config.checkpoint_every = 10_000
        for opt in (generator, critic):
            opt.warmup_steps = 2_000  # MaskGIT base_config lr_warmup_steps
        # MaskGIT uses a pretrained ResNet-50 for its perceptual loss (weight 0.1); as in
        # MAGVIT (videogvt configs/vqgan2d_ucf101_config.py: perceptual_loss_weight 0.1,
        # perceptual_loss_on_logit True), the mean squared logit difference at 224x224. Its
        # weights are never downloaded: --config.loss.perceptual_weights=<.npz>, docs/weights.md.
        config.loss.perceptual_network = "resnet50"
        config.loss.perceptual_weight = 0.1
        config.loss.perceptual_on_logits = True
        config.loss.adversarial_weight = 0.1  # g_adversarial_loss_weight
        config.loss.r1_weight = 10.0  # grad_penalty_cost, r1
        config.loss.discriminator_start = 0  # MaskGIT's public config has no adversarial warm-up
        config.evaluators.num_images = 50_000
    else:
        config.data.image_size = 32
        config.batch_size = 16
        config.eval_batch_size = 32
        config.total_steps = 3_000
        config.ema_decay = 0.99
        config.log_every = 100
        config.eval_every = 1_000
        config.images_every = 1_000
        config.checkpoint_every = 1_000
        config.eval_steps = 4
        config.model.filters = 16
        config.model.channel_multipliers = (1, 2, 2)  # 32x32 -> 8x8 tokens
        config.model.num_res_blocks = 1
        config.model.embedding_dim = 32
        config.model.norm_groups = 8
        config.discriminator.channel_multiplier = 1.0 / 32  # 16 channels at 32x32, then 32
        config.discriminator.max_filters = 32
        config.loss.perceptual_network = "none"
        config.loss.adversarial_weight = 0.05
        config.loss.discriminator_start = 1_000  # reconstruct first, then sharpen adversarially
        config.loss.r1_weight = 1.0
        for opt in (generator, critic):
            opt.learning_rate = 1e-3 if opt is generator else 2e-4
            opt.b1 = 0.5
        config.evaluators.num_images = 500
    return config
