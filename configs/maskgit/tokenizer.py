"""Stage I of MaskGIT: the VQGAN / FSQ-GAN tokenizer. `get_config("fsq,tiny")` and friends.

Presets: a quantizer (`fsq` | `vq` | any registered name; or `--config.quantizer.name=vq`), a size
`tiny` (32x32 procedural scenes, trains in minutes on a CPU) | `paper` (MaskGIT's VQGAN on
ImageNet 256x256, as in the FSQ paper, Sec. 4.1 / App. A), and the flag `official` (with
`vq,paper`: the published MaskGIT tokenizer checkpoint, docs/official_checkpoints.md). Sources:
the FSQ paper (stage I 1M steps at batch 512; FSQ [8,5,5,5] vs. VQ 1024 codes) and
google-research/maskgit `configs/vqgan_config.py` (everything else).
"""

from __future__ import annotations

import ml_collections

from fsq_jax import config_lib as cl


def _paper(config: ml_collections.ConfigDict) -> None:
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
    for opt in config.optimizers.values():
        opt.warmup_steps = 2_000  # MaskGIT base_config lr_warmup_steps
    # MaskGIT's vqgan_config: a pretrained ResNet-50 perceptual loss, perceptual_loss_weight
    # 0.1, perceptual_loss_on_logit False (the mean squared difference of its last feature map
    # at 224x224; MAGVIT's losses.py calculate_perceptual_loss_on_pretrained is the code). Its
    # weights are never downloaded: --config.loss.perceptual_weights=<.npz>, docs/weights.md.
    config.loss.perceptual_network = "resnet50"
    config.loss.perceptual_weight = 0.1
    config.loss.perceptual_on_logits = False
    config.loss.adversarial_weight = 0.1  # g_adversarial_loss_weight
    # grad_penalty_cost 10 with gradient_penalty "r1": the discriminator loss gets
    # 10 * mean_b ||grad D(x_b)||^2 (MAGVIT losses.py r1_gradient_penalty).
    config.loss.r1_weight = 10.0
    config.loss.discriminator_start = 0  # MaskGIT's public config has no adversarial warm-up
    config.evaluators.num_images = 50_000  # FSQ paper: 50k validation reconstructions
    # MaskGIT's VQGAN as released (google-research/maskgit nets/vqgan_tokenizer.py, the
    # tokenizer_imagenet256 checkpoint's shapes; docs/fidelity.md): the 1x1 shortcut conv of a
    # channel-changing ResBlock acts on the block output, VQ quantizes the encoder output
    # without projections, and pixels are [0, 1] (inference.py feeds images / 255).
    config.model.shortcut = "output"
    config.model.project_codes = config.quantizer.name != "vq"  # FSQ's 4 dims need them
    config.model.image_range = "unit"
    # Memory, not the math (docs/fidelity.md): 64 images per device on 8 x 80 GB need each
    # ResBlock rematerialised and the step's batch as 2 micro-batches of 32 per device
    # (benchmarks/memory.py: 112.5 GiB per device planned without either, 50.0 GiB with both;
    # docs/performance.md). The optimiser's batch stays 512.
    config.model.remat = "block"
    config.grad_accum_steps = 2


def _official(config: ml_collections.ConfigDict) -> None:
    """The published tokenizer_imagenet{256,512}_checkpoint (scripts/convert_official.py):
    the paper architecture with VQ; the checkpoint holds no discriminator or perceptual
    network, so evaluation builds none (docs/official_checkpoints.md)."""
    config.loss.perceptual_network = "none"


def _tiny(config: ml_collections.ConfigDict) -> None:
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
    config.model.update(filters=16, channel_multipliers=(1, 2, 2),  # 32x32 -> 8x8 tokens
                        num_res_blocks=1, embedding_dim=32, norm_groups=8)
    config.discriminator.channel_multiplier = 1.0 / 32  # 16 channels at 32x32, then 32
    config.discriminator.max_filters = 32
    config.loss.perceptual_network = "none"
    config.loss.adversarial_weight = 0.05
    config.loss.discriminator_start = 1_000  # reconstruct first, then sharpen adversarially
    config.loss.r1_weight = 0.5  # 0.5 * mean ||grad D||^2, as before r1_weight meant the cost
    config.optimizers.generator.update(learning_rate=1e-3, b1=0.5)
    config.optimizers.discriminator.update(learning_rate=2e-4, b1=0.5)
    config.evaluators.num_images = 500
    config.evaluators.reference_images = 500  # of the 100k train scenes: cheap on a CPU


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The tokenizer experiment for `arg` = '<quantizer>,<tiny|paper>' (default fsq,tiny)."""
    arg = cl.parse_arg(arg, quantizer=cl.Choice("fsq", cl.names()),
                       size=cl.Choice("tiny", ("tiny", "paper")), official=False)
    if arg.official and (arg.quantizer, arg.size) != ("vq", "paper"):
        raise ValueError(f"config arg: 'official' is the released VQ tokenizer; use "
                         f"'vq,paper,official' ({arg})")
    config = cl.loop(task="maskgit.tasks:TokenizerTask")
    # MaskGIT's VQGAN (vqgan_config.py): 128 filters, multipliers (1, 1, 2, 2, 4) (256 -> 16x16
    # tokens), 2 residual blocks per level, GroupNorm 32, swish, average-pool downsampling.
    config.model = ml_collections.ConfigDict({
        "filters": 128, "channel_multipliers": (1, 1, 2, 2, 4), "num_res_blocks": 2,
        "embedding_dim": 256, "norm_groups": 32, "activation": "swish",
        "conv_downsample": False, "shortcut": "input", "project_codes": True,
        "image_range": "symmetric", "dtype": "float32"})
    # FSQ paper Table 1: [8,5,5,5] for 2^10 (paper), [8,6,5] for 2^8 (tiny). VQ as MaskGIT: 1024
    # codes of dimension 256, commitment 0.25, entropy loss 0.1 at temperature 0.01.
    config.quantizer = cl.quantizer(
        arg.quantizer, log2_size=10 if arg.size == "paper" else 8,
        vq={"dim": 256 if arg.size == "paper" else 32, "beta": 0.25, "entropy_weight": 0.1,
            "entropy_temperature": 0.01})
    # What the tokenizer's training keeps for the backward pass: none | dots | block (each
    # encoder / decoder ResBlock keeps only its input and runs again in the backward pass; the
    # same parameters and math). maskgit/tokenizer.py; benchmarks/memory.py measures it.
    config.model.remat = "none"
    # Micro-batches per optimiser step (gradient accumulation; the optimiser's batch stays
    # batch_size): memory, not the objective (docs/fidelity.md).
    config.grad_accum_steps = 1
    # StyleGAN2's discriminator as MaskGIT: widths from StyleGAN's table, blur resampling.
    config.discriminator = ml_collections.ConfigDict({
        "channel_multiplier": 1.0, "max_filters": 512, "blur_resample": True,
        "leaky_slope": 0.2})
    config.loss = ml_collections.ConfigDict({
        "reconstruction": "l2", "reconstruction_weight": 1.0, "perceptual_network": "none",
        "perceptual_weights": "", "perceptual_weight": 0.1, "perceptual_on_logits": False,
        "adversarial_weight": 0.1,
        "discriminator_start": 0, "r1_weight": 10.0, "lecam_weight": 0.0,
        "lecam_ema_decay": 0.999, "quantizer_weight": 1.0})
    # MaskGIT vqgan_config: Adam(b1=0, b2=0.99), lr 1e-4 for both, constant after warm-up.
    config.optimizers = ml_collections.ConfigDict({
        group: cl.optimizer(name="adam", learning_rate=1e-4, b1=0.0, b2=0.99,
                            schedule="constant")
        for group in ("generator", "discriminator")})
    config.evaluators = ml_collections.ConfigDict({
        "fid": True,  # reconstruction FID (needs the Inception weights, `make inception`)
        "usage": True,  # codebook usage over the evaluation images
        "num_images": 1000,
        "batch_size": 50,
        "out_dir": "",  # where the usage histogram PNG and counts go ("" = not written)
        # FID reference (FSQ paper: reconstructions against the ImageNet train set): "" =
        # statistics of the train split computed here once, unaugmented, cached; or an ADM
        # reference batch .npz (its mu/sigma), e.g. VIRTUAL_imagenet256_labeled.npz.
        "reference": "",
        "reference_images": 0,  # train images in the statistics (0 = the whole split)
    })
    (_paper if arg.size == "paper" else _tiny)(config)
    if arg.official:
        _official(config)
    return config
