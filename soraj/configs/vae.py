"""VAE training config: `--config=soraj/configs/vae.py:tiny` (CPU) or `:4x8x8-c16`."""

import ml_collections

# Per preset: the clips it trains on (frames, height, width) and batch size.
_DATA = {
    "tiny": dict(num_frames=9, height=32, width=32, batch_size=16),
    "small": dict(num_frames=17, height=64, width=64, batch_size=8),
    "4x8x8-c16": dict(num_frames=17, height=256, width=256, batch_size=32),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in _DATA:
        raise ValueError(f"unknown VAE config {arg!r}; allowed: {sorted(_DATA)}")
    data = _DATA[arg]
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.preset = arg  # a key of soraj.models.vae.VAE_PRESETS

    config.data = ml_collections.ConfigDict()
    config.data.source = "shapes"
    config.data.num_clips = 50_000
    config.data.num_frames = data["num_frames"]
    config.data.height = data["height"]
    config.data.width = data["width"]
    # Images are one-frame videos in the same network: this fraction of each batch is T = 1.
    config.data.image_fraction = 0.25
    config.batch_size = data["batch_size"]

    config.loss = ml_collections.ConfigDict()
    config.loss.l1_weight = 0.1
    config.loss.mse_weight = 1.0
    config.loss.kl_weight = 1e-6

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
    config.num_stats_batches = 16  # batches used for the latent shift/scale at the end
    return config
