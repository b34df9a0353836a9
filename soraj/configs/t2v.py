"""Text-to-video DiT training config: `--config=soraj/configs/t2v.py:tiny` (CPU) or `:S/2` ..."""

import ml_collections
from ml_collections import config_dict

from soraj.configs import scale_out
from soraj.data.frame_masks import MASK_SHARES

# Per preset: the DiT preset (and patch_size, where it is not the preset's), the default clip
# (frames, height, width), the packed rows (batch_size rows of row_length tokens, at most
# max_segments samples each) and the token budget of one sample. The default clip fills
# token_budget with a 4×8×8 VAE and 1×2×2 patches (tiny: its 4×4×4 Shapes VAE), so a row holds
# row_length / token_budget full-size clips.
_PRESETS = {
    "tiny": dict(
        model="tiny",
        num_frames=9,
        height=32,
        width=32,
        batch_size=8,
        row_length=192,
        max_segments=4,
        token_budget=192,
    ),
    # 9×64×64 Shapes clips through a 64×64 Shapes VAE (vae.py:tiny64; the VAE presets
    # "tiny64*" differ in temporal factor) in 1×4×4 patches: with a 2× temporal VAE 80 tokens a
    # clip, four clips a row, each attending within a window of token_budget tokens and the
    # blocks beside it (docs/architecture.md §4). The issue-14 experiments train on it.
    "tiny64": dict(
        model="tiny",
        patch_size=(1, 4, 4),
        num_frames=9,
        height=64,
        width=64,
        batch_size=8,
        row_length=320,
        max_segments=4,
        token_budget=80,
    ),
    # The same clips through a per-frame 64×64 VAE (vae.py:tiny64, --config.preset=p4-frames:
    # 9 latent frames of 16×16×8, no temporal compression): 144 tokens a clip.
    "tiny64-frames": dict(
        model="tiny",
        patch_size=(1, 4, 4),
        num_frames=9,
        height=64,
        width=64,
        batch_size=8,
        row_length=576,
        max_segments=4,
        token_budget=144,
    ),
    # The per-frame VAE's latents with 4 frames folded into channels (vae.py:tiny64-frames
    # --config.latent_frame_fold=4: 3 latent frames of 16×16×32, soraj/models/latent_codec.py):
    # 48 tokens a clip, the shipped 32×32 model's count, four clips a row.
    "tiny64-fold": dict(
        model="tiny",
        patch_size=(1, 4, 4),
        num_frames=9,
        height=64,
        width=64,
        batch_size=8,
        row_length=192,
        max_segments=4,
        token_budget=48,
    ),
    "S/2": dict(
        model="S/2",
        num_frames=17,
        height=256,
        width=256,
        batch_size=16,
        row_length=4096,
        max_segments=32,
        token_budget=1280,
    ),
    "B/2": dict(
        model="B/2",
        num_frames=17,
        height=256,
        width=256,
        batch_size=16,
        row_length=4096,
        max_segments=32,
        token_budget=1280,
    ),
    "L/2": dict(
        model="L/2",
        num_frames=33,
        height=256,
        width=256,
        batch_size=64,
        row_length=4608,
        max_segments=32,
        token_budget=2304,
    ),
    "XL/2": dict(
        model="XL/2",
        num_frames=33,
        height=256,
        width=256,
        batch_size=128,
        row_length=4608,
        max_segments=32,
        token_budget=2304,
    ),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in _PRESETS:
        raise ValueError(f"unknown t2v config {arg!r}; allowed: {sorted(_PRESETS)}")
    preset = _PRESETS[arg]
    from soraj.models.dit import DIT_PRESETS  # the preset table owns the model sizes

    dit = DIT_PRESETS[preset["model"]]
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.vae_checkpoint = ""  # a `soraj train-vae` workdir or an exported inference checkpoint

    config.model = ml_collections.ConfigDict()
    config.model.width = dit.width
    config.model.depth = dit.depth
    config.model.num_heads = dit.num_heads
    config.model.mlp_ratio = dit.mlp_ratio
    config.model.patch_size = tuple(preset.get("patch_size", dit.patch_size))
    config.model.attention_backend = dit.attention_backend
    # With mesh.context > 1: how self-attention exchanges keys between the devices that hold
    # a row's tokens ("all_gather" | "ulysses" | "ring" | "usp"; docs/architecture.md §4).
    config.model.context_parallel = dit.context_parallel
    config.model.dtype = "float32"  # compute dtype ("float32" | "bfloat16"); params stay f32
    # Scale-out switches (soraj/models/dit.py): scan_blocks runs the blocks as one nn.scan (one
    # compiled block, stacked params); remat recomputes activations in the backward pass
    # ("none" | "full" | "dots_saveable", see DiT.REMAT_POLICIES). Scanned blocks that keep
    # the matmul outputs and recompute the elementwise work are the fastest step measured on
    # CPU (experiments/bench/cpu_runtime.py), and the usual setting at scale.
    config.model.scan_blocks = True
    config.model.remat = "dots_saveable"
    # adaLN modulation (soraj/models/dit_config.py MODULATIONS): "per_segment" runs each
    # block's Dense once per (sample, distinct t) and gathers it per token: per-token adaLN's
    # function and quality with no per-token matmul (experiments/bench/modulation.py);
    # "single" shares one per-token modulation across the blocks (adaLN-single, behind at a
    # fixed budget); "per_token" is the earlier per-block, per-token one.
    config.model.modulation = "per_segment"
    # "class": a label embedding in adaLN in place of text, for class-conditional benchmarks
    # (UCF-101 style: --config.data.source=class_folder --config.data.root=DIR); num_classes
    # must equal the folder's class count. The caption dropout then drops labels to the null.
    config.model.conditioning = "text"
    config.model.num_classes = 0

    config.text = ml_collections.ConfigDict()
    config.text.encoder = "minilm"
    # MiniLM WordPiece tokens per caption, [CLS] and [SEP] included; longer captions are cut.
    # The longest dense Shapes caption is 26 (two objects, measured over the whole grammar);
    # 64 leaves room for descriptive captions of `soraj recaption --backend openai` and real
    # footage. A latent cache of text states and an exported checkpoint keep their own M.
    config.text.max_tokens = 64
    # Only for encoder="bytes": the trainable byte-level encoder, trained with the DiT.
    # The fields are those of soraj.models.conditioning.TextConfig.
    config.text.byte_width = 256
    config.text.byte_depth = 2
    config.text.byte_heads = 4

    config.data = ml_collections.ConfigDict()
    config.data.source = "shapes"
    config.data.split = "train"  # held-out colour-shape pairs never appear in training
    config.data.num_clips = 20_000
    config.data.num_frames = preset["num_frames"]
    config.data.height = preset["height"]
    config.data.width = preset["width"]
    config.data.canvases = ((32, 64), (64, 32), (32, 32))  # source "shapes_canvases" only
    # Real footage at native size: source "video_folder" (ROOT/captions.jsonl, see
    # soraj/data/video_folder.py; num_random_clips > 0 draws that many random windows) or
    # "class_folder" (ROOT/<class name>/<clips>, for class-conditional models).
    # Prepared datasets at config.data.root: source "shapes_tfds" (the folder `soraj
    # make-dataset shapes` returned; split "train" or "validation") or "recaptioned" (a `soraj
    # recaption` folder; "caption" is its dense caption, and a Shapes one adds the exact
    # "caption_oracle").
    config.data.root = ""
    config.data.num_random_clips = 0
    # The training clips' frame rate: the export stores it (trained_on.fps) and `soraj
    # generate` writes videos at it. Unset (None), the trainer takes the source's before any
    # work (soraj/dit_data.py training_fps): the Shapes sources (shapes, shapes_canvases,
    # shapes_tfds, a recaptioned Shapes folder) play at the Shapes world's (shapes.FPS); a video
    # folder (or a recaptioned one) at its videos' most common rate (VideoFolderSource
    # .frame_rate), which a value given here must match. class_folder needs one given, e.g.
    # --config.data.fps=25.
    config.data.fps = config_dict.placeholder(float)
    # Per sample, which caption field trains: (field, odds) pairs summing to 1, drawn before the
    # dropout, e.g. (("caption_dense", 0.95), ("caption_original", 0.05)) as in DALL·E 3. The
    # fields must be in the source's records (Shapes: caption, caption_original, short_caption).
    config.data.caption_mix = (("caption", 1.0),)
    config.data.caption_dropout = 0.1  # per sample; the null text teaches CFG's unconditional v
    # The mask curriculum (soraj/data/frame_masks.py): per video sample a mask type gives some
    # latent frames as conditions (no loss, t = 0 or a little noise), so one model learns
    # image to video, extension, loops, connecting and keyframes. shares: (type, share) pairs;
    # (("text_to_video", 1.0),) turns it off. Masked samples drop the text, both conditions or
    # the visual one (given frames as pure noise) 5 % each instead of caption_dropout.
    config.data.masks = ml_collections.ConfigDict(
        dict(
            shares=MASK_SHARES,
            noisy_given=0.25,
            max_given_t=0.1,
            drop_text=0.05,
            drop_both=0.05,
            drop_visual=0.05,
        )
    )
    # Packing (soraj/data/packed_pipeline.py): rows of row_length tokens, at most max_segments
    # samples each, batch_size rows a step; grain's "first_fit" or "best_fit" over packing_bins
    # rows at once (0: 4 × batch_size).
    config.data.row_length = preset["row_length"]
    config.data.max_segments = preset["max_segments"]
    config.data.packing = "first_fit"
    config.data.packing_bins = 0
    # Native size (soraj/data/native_size.py): each clip keeps its aspect ratio, is snapped to
    # whole patches, downscaled only above token_budget, and cut to min_frames..max_frames frames
    # (1 + ft·k). square_crop centre-crops every clip to a square first (a baseline only).
    config.data.token_budget = preset["token_budget"]
    config.data.max_frames = config.data.get_ref("num_frames")  # follows --config.data.num_frames
    config.data.min_frames = config.data.get_ref("num_frames")
    config.data.square_crop = False
    # NaViT token dropping: the dropped share grows linearly with a sample's token count from
    # rate_low at tokens_low to rate_high at tokens_high (0 and 0: off).
    config.data.token_drop = ml_collections.ConfigDict(
        dict(rate_low=0.0, rate_high=0.0, tokens_low=1, tokens_high=1)
    )
    config.data.max_bad_record_ratio = 0.01  # the job stops when more records than this are bad
    config.data.workers = 0  # grain worker processes that read and cut clips
    # Logical data shards (soraj/data/data_shards.py): the global batch is shard 0's rows, then
    # shard 1's, ...; each process reads its own shards, so the same run gives the same batches
    # on any process count dividing `shards`. 0: one shard per process.
    config.data.shards = 0
    # A `soraj cache-latents` folder made from this dataset by config.vae_checkpoint: training
    # reads its latents (and text states, if cached) instead of encoding each batch. "" = online.
    config.data.latent_cache = ""
    config.batch_size = preset["batch_size"]  # packed rows per step

    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.timestep_mean = 0.0
    config.diffusion.timestep_std = 1.0
    # With shift_by_tokens, each sample's timestep shift grows linearly with its token count
    # from base_shift at base_tokens to max_shift at max_tokens (soraj.diffusion.timesteps
    # .resolution_shift); without it, every sample gets the constant `shift`.
    config.diffusion.shift_by_tokens = False
    config.diffusion.shift = 1.0
    config.diffusion.base_tokens = 256
    config.diffusion.base_shift = 1.0
    config.diffusion.max_tokens = 4096
    config.diffusion.max_shift = 3.0
    config.diffusion.weighting = "per_sample"

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 500
    config.optim.decay_steps = 0
    config.optim.weight_decay = 0.0
    config.optim.b1 = 0.9
    config.optim.b2 = 0.99
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.999

    config.sample = ml_collections.ConfigDict()
    config.sample.steps = 30
    config.sample.guidance = 4.0
    config.sample.prompt = (
        "A large red circle moves to the right. A small blue square stays still. "
        "The background is black."
    )

    scale_out.add_fields(config)
    config.total_steps = 5000
    config.log_every = 50
    config.save_every = 500
    config.sample_every = 1000  # and at the end; 0: no samples
    config.keep_checkpoints = 2
    return config
