"""The re-captioning experiment's T2V runs: `--config=experiments/recaption/config.py:C`.

Every run is the tiny T2V model of soraj/configs/t2v.py with the same clips (the 20,000 clips
of `soraj make-dataset shapes`, read in the same order), steps, batch, schedule and seed; only
the captions differ, drawn per sample at loading time (DALL·E 3 §3.1):

  A  100 % original (web-style alt-text)
  B  95 % short synthetic (the captioner's short mode) + 5 % original
  C  95 % dense synthetic (the captioner's dense mode) + 5 % original   (DALL·E 3's recipe)
  D  100 % dense synthetic
  E  95 % oracle dense (the renderer's exact caption) + 5 % original  (upper bound of C)

A run name may carry an adaLN layout after a dash (E-single): the same run with
config.model.modulation set to it. Without one, runs use "per_token".

A and E read the TFDS dataset directly (its "caption" is the oracle dense caption); B, C and D
read the `soraj recaption` folder made from it, whose records are the same clips in the same
order, so the packing, timesteps and caption draws are identical across runs.
"""

from soraj.configs import t2v
from soraj.models.dit_config import MODULATIONS

DATA = "experiments/recaption/data"
TFDS = f"{DATA}/tfds/soraj_shapes/n20000_v100_t9_h32_w32_s0/1.1.0"
RECAPTIONED = f"{DATA}/recaptioned"
MIXES = {
    "A": ("shapes_tfds", TFDS, (("caption_original", 1.0),)),
    "B": ("recaptioned", RECAPTIONED, (("caption_short", 0.95), ("caption_original", 0.05))),
    "C": ("recaptioned", RECAPTIONED, (("caption_dense", 0.95), ("caption_original", 0.05))),
    "D": ("recaptioned", RECAPTIONED, (("caption_dense", 1.0),)),
    "E": ("shapes_tfds", TFDS, (("caption", 0.95), ("caption_original", 0.05))),
}
STEPS = 1000


def get_config(arg: str = "C"):
    run, _, modulation = arg.partition("-")
    if run not in MIXES or modulation not in ("", *MODULATIONS):
        raise ValueError(
            f"unknown run {arg!r}; allowed: a caption set ({', '.join(MIXES)}), optionally "
            f"with an adaLN layout (e.g. E-single; layouts: {', '.join(MODULATIONS)})"
        )
    source, root, mix = MIXES[run]
    config = t2v.get_config("tiny")
    config.vae_checkpoint = "experiments/shapes/checkpoint/vae"
    config.data.source = source
    config.data.root = root
    config.data.num_clips = 20_000
    config.data.caption_mix = mix
    config.total_steps = STEPS
    config.optim.warmup_steps = 200
    config.save_every = 500
    config.sample_every = 0
    # Runs A and E were trained before adaLN-single; every run keeps their per-token adaLN so
    # the five differ in captions only. "E-single" is run E with adaLN-single: the two layouts
    # compared on the same budget (experiments/bench/README.md).
    config.model.modulation = modulation or "per_token"
    config.model.scan_blocks = False  # as A-E were trained
    config.model.remat = "none"
    return config
