"""Video captioner training config: `--config=soraj/configs/captioner.py:tiny` (Shapes, CPU)."""

import ml_collections

from soraj.configs import scale_out


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg != "tiny":
        raise ValueError(f"unknown captioner config {arg!r}; allowed: ['tiny']")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.frames = 9
    config.model.height = 32
    config.model.width = 32
    config.model.tubelet = (3, 8, 8)  # three frames a token: motion shows inside it
    config.model.model_width = 128
    config.model.encoder_depth = 3
    config.model.decoder_depth = 3
    config.model.num_heads = 4
    config.model.max_length = 40
    # Per-frame conv stem channels, and colour-invariant form channels (FormStem): shape read
    # without colour, so a colour–shape pair training never showed is still described right
    # (experiments/captioner/NOTES.md, v7).
    config.model.stem_channels = 16
    config.model.form_channels = 16
    # Options tried against held-out shape, off in the shipped recipe: decoder word dropout,
    # and words the decoder writes but never reads back (e.g. the colour words).
    config.model.token_dropout = 0.0
    config.model.unfed_words = ()

    config.data = ml_collections.ConfigDict()
    config.data.source = "shapes"
    config.data.num_clips = 20_000  # the DiT's training clips (t2v.py: seed, split, size)
    config.data.num_frames = 9
    config.data.height = 32
    config.data.width = 32
    config.data.split = "train"  # held-out colour-shape pairs are never seen
    # Web-style original captions (soraj/data/shapes_alt_text.py AltTextNoise fields).
    config.data.alt_text = ml_collections.ConfigDict(
        dict(
            colour=0.8,
            second=0.3,
            size=0.2,
            motion=0.3,
            background=0.15,
            wrong_colour=0.1,
            irrelevant=0.05,
            filler=0.5,
            casing=0.3,
        )
    )
    # The labelled subset whose exact dense and short captions fine-tune the captioner
    # (DALL·E 3's small human-written set): at most 5 % of the clips.
    config.data.labelled_fraction = 0.05
    # Fine-tuning keeps this share of original-caption examples, so it does not forget what
    # pre-training learned from every clip while it fits the small labelled subset.
    config.data.finetune_original_share = 0.25
    # Labelled clips are mirrored left-right and played backwards (their captions follow),
    # four views of each of the few exact labels.
    config.data.augment = True
    # Labelled captions name objects left to right in the first frame ("reading"), not in the
    # order the scene drew them ("scene"): each sentence then has a fixed place to look
    # (experiments/captioner/NOTES.md, v8).
    config.data.object_order = "reading"
    # Share of examples whose clip is drawn again in random off-palette colours, their colour
    # words unscored (soraj/data/shapes_recolour.py): shape must come from the pixels.
    config.data.recolour_share = 0.5
    config.data.threads = 2

    config.batch_size = 64
    config.pretrain_steps = 1000  # original captions of every clip, mode "original"
    config.finetune_steps = 2000  # the labelled subset in modes "dense" and "short"

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.optim.decay_steps = 3000  # cosine over both phases
    config.optim.weight_decay = 0.01
    config.optim.b1 = 0.9
    config.optim.b2 = 0.99
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.999

    config.eval_clips = 256  # held-out clips captioned at every save
    scale_out.add_fields(config)
    config.log_every = 50
    config.save_every = 500
    config.keep_checkpoints = 2
    return config
