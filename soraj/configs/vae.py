"""VAE training config: `--config=soraj/configs/vae.py:tiny` (Shapes, CPU), `:tiny64` (9×64×64
Shapes clips; the VAE is `config.preset`, default "tiny64", 2×2 pixel patches, and e.g.
`--config.preset=tiny64-t2` halves time once instead of twice), `:tiny64-frames` (the shipped
per-frame 64×64 VAE, trained on single frames), `:small`, `:4x8x8-c16`, or real
footage through the video-folder source: `:real-4x8x8` / `:real-4x4x4` with
`--config.data.folder=DIR` (a folder with captions.jsonl, see soraj/data/video_folder.py).

Clip shapes. `data.clip_shapes` is a tuple of (frames, height, width, batch_size), frames = 1
for images: every step draws one batch of every shape, all in one jitted step (compiled once
for the whole set of shapes). When it is None (the Shapes configs), the single-shape fields
give two shapes: (num_frames, height, width) videos and (1, height, width) images, with
image_fraction of batch_size being images; when it is set, those fields are not read.

The real-footage configs are sized for one GPU. A CPU smoke run of one needs smaller batches:
    soraj train-vae --config=soraj/configs/vae.py:real-4x8x8 --config.data.folder=DIR \
      --workdir=W --config.total_steps=3 --config.data.clip_shapes="((9,64,64,2),(1,96,96,4))"
"""

import ml_collections
from ml_collections import config_dict

from soraj.configs import scale_out

# Shapes configs, one video shape + images: the clips per preset (frames, height, width) and
# the batch size.
_SHAPES_DATA = {
    "tiny": dict(num_frames=9, height=32, width=32, batch_size=16),
    "tiny64": dict(num_frames=9, height=64, width=64, batch_size=16),
    # The per-frame VAE (preset p4-frames) learns from frames alone: 48 images a step.
    "tiny64-frames": dict(num_frames=9, height=64, width=64, batch_size=48),
    "small": dict(num_frames=17, height=64, width=64, batch_size=8),
    "4x8x8-c16": dict(num_frames=17, height=256, width=256, batch_size=32),
}

# Real-footage configs → the CPU-sized preset they train (soraj.models.vae.VAE_PRESETS).
_REAL_PRESETS = {"real-4x8x8": "cpu-4x8x8-c16", "real-4x4x4": "cpu-4x4x4-c8"}

# Real footage of about 176×144, such as the iscc-samples demo, whose picture is 176×96
# inside its letterbox: (frames, height, width, batch). Every size is a multiple of 8 and every
# length 1 + 4k, so both presets take them. Longer clips at small random crops, shorter ones at
# the full picture height, whole 96×176 frames, and images; nothing taller than 96, so frames
# of such footage are never upscaled (random crops shrink, never enlarge, where they can).
_REAL_CLIP_SHAPES = (
    (17, 64, 64, 8),
    (9, 96, 96, 4),
    (9, 96, 176, 2),
    (1, 96, 96, 16),
)

# The shipped real-footage VAEs' run: both configs at once on one H100, about 8 minutes each
# (experiments/vae_real/NOTES.md; GPU.md says how to run there).
_REAL_TOTAL_STEPS = 1400


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    allowed = sorted(_SHAPES_DATA) + sorted(_REAL_PRESETS)
    if arg not in allowed:
        raise ValueError(f"unknown VAE config {arg!r}; allowed: {allowed}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.preset = _REAL_PRESETS.get(arg, arg)  # a key of soraj.models.vae.VAE_PRESETS
    # Latent frames the export folds into channels for the DiT (1, 2, 4 or 8;
    # soraj/models/latent_codec.py): a per-frame VAE with fold 4 gives the DiT the token count
    # of a 4× temporal VAE. It changes only the export, not the VAE or its training.
    config.latent_frame_fold = 1

    config.data = ml_collections.ConfigDict()
    config.data.source = "shapes"  # "shapes" or "video_folder"
    config.data.folder = config_dict.placeholder(str)  # the video_folder source's folder
    config.data.num_clips = 50_000  # Shapes clips, or random windows of the video folder
    config.data.min_crop_scale = 0.5  # video_folder: smallest random crop, of the largest
    config.data.clip_shapes = config_dict.placeholder(tuple)
    config.data.read_threads = 2  # per clip shape

    config.loss = ml_collections.ConfigDict()
    config.loss.pixel_loss = "l1"  # "l1" or "charbonnier" (√(d² + ε²), a smooth L1)
    config.loss.charbonnier_epsilon = 1e-3
    config.loss.pixel_weight = 0.1
    config.loss.mse_weight = 1.0
    config.loss.edge_weight = 0.0  # squared error of spatial differences (vae_losses.edge_loss)
    config.loss.kl_weight = 1e-6
    # The GAN: hinge loss of a 3D PatchGAN, on from gan_start_step (None: never, and no
    # discriminator is built). The generator term is scaled by the VQGAN adaptive weight,
    # ‖∇ reconstruction‖ / ‖∇ adversarial‖ at the decoder's last layer (clipped to
    # adaptive_weight_max), times gan_weight.
    config.loss.gan_start_step = config_dict.placeholder(int)
    config.loss.gan_weight = 0.5
    config.loss.adaptive_weight_max = 1e4

    # Sized for the CPU-sized VAEs: VQGAN's 64 wide, up to ×8, would cost several times the VAE.
    config.discriminator = ml_collections.ConfigDict()
    config.discriminator.base_channels = 32
    config.discriminator.num_downsamples = 3
    config.discriminator.max_multiplier = 4
    config.discriminator.dtype = "float32"
    config.discriminator.optim = ml_collections.ConfigDict()
    config.discriminator.optim.learning_rate = 1e-4
    config.discriminator.optim.warmup_steps = 0  # counted from its first update
    config.discriminator.optim.decay_steps = 0
    config.discriminator.optim.weight_decay = 0.0
    config.discriminator.optim.b1 = 0.5  # the usual GAN momentum: a quickly moving target
    config.discriminator.optim.b2 = 0.9
    config.discriminator.optim.grad_clip = 1.0

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.optim.decay_steps = 0  # 0: constant after warm-up; else cosine decay to 10 %
    config.optim.weight_decay = 0.0
    config.optim.b1 = 0.9
    config.optim.b2 = 0.99
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.999

    config.total_steps = 2000
    config.log_every = 50
    config.save_every = 500
    config.sample_every = 1000
    config.keep_checkpoints = 2
    scale_out.add_fields(config)
    config.num_stats_batches = 16  # steps whose batches give the latent shift/scale at the end

    if arg == "tiny64-frames":
        # A per-frame VAE sees nothing across frames, so its batches are single frames; the
        # edge loss keeps the shapes' corners, and the rate decays to 10 % by the end
        # (experiments/shapes/NOTES.md, issue 14).
        config.preset = "p4-frames"
        config.data.clip_shapes = ((1, 64, 64, 48),)
        config.loss.edge_weight = 1.0
        config.total_steps = 3000
        config.optim.decay_steps = 2800
    if arg in _SHAPES_DATA:
        shapes = _SHAPES_DATA[arg]
        config.data.num_frames = shapes["num_frames"]
        config.data.height = shapes["height"]
        config.data.width = shapes["width"]
        # Images are one-frame videos in the same network: this fraction of each batch is T = 1.
        config.data.image_fraction = 0.25
        config.batch_size = shapes["batch_size"]
    else:
        _real_footage(config)
    return config


def _real_footage(config: ml_collections.ConfigDict) -> None:
    """A CPU-sized VAE on real clips and stills, sized for about 8 minutes on one GPU.

    total_steps is a reference: --config.total_steps=N moves the cosine decay's end and the
    GAN's start (5/8 of the run) with it, unless they are set too.
    """
    config.data.source = "video_folder"  # needs --config.data.folder=DIR
    config.data.num_clips = 100_000
    config.data.clip_shapes = _REAL_CLIP_SHAPES
    config.data.read_threads = 4  # cropping and resizing real frames is the host's work
    # Real footage has texture everywhere: a robust L1 leads, squared error keeps PSNR honest.
    config.loss.pixel_loss = "charbonnier"
    config.loss.pixel_weight = 1.0
    config.loss.gan_weight = 0.1  # PSNR and SSIM are what is reported: a light GAN
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 200
    total_steps = config_dict.FieldReference(_REAL_TOTAL_STEPS)
    config.total_steps = total_steps
    config.optim.decay_steps = total_steps - config.optim.warmup_steps
    config.loss.gan_start_step = total_steps * 5 // 8
    config.log_every = 50
    config.save_every = 500
    config.sample_every = 500
