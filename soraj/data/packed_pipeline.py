"""The grain pipeline of packed training batches (docs/architecture.md §4), the way soraj trains:

    source ─ ReplacingSource (bad records swapped for readable ones, counted)
      → this host's shard (ShardByJaxProcess, drop_remainder) → shuffle → repeat
      → PrepareExample     caption mix + drop, native-size plan + cut, token drops   [workers]
      → EncodeExample      VAE encode (or cached latents), patchify, drop tokens     [main process]
      → grain first-/best-fit packing into rows of L tokens and at most S segments
      → PackedRow → batch(B) → BadRecordMonitor

Images (T = 1) and clips of every size and length share rows. Every stage is grain's or a
grain transform, so the iterator state (a small dict) restores the exact stream with any number
of worker processes. The packers are grain's own: per-sample text, grid and the bad-record
count ride along as features of S slots, one slot per sample, so slot s - 1 of a row belongs to
the tokens of segment s.

Host rows hold caption bytes, (S, CAPTION_BYTES) uint8; the trainer encodes them per batch.
Records of a latent cache that carry text states pack those instead, as text (S, M, E).
"""

import dataclasses

import grain
import jax
import numpy as np
from absl import flags

from soraj.data.bad_records import BadRecordMonitor, ReplacingSource, check_clip
from soraj.data.caption_versions import DEFAULT_CAPTION_MIX, check_caption_mix, pick_caption
from soraj.data.frame_masks import MaskCurriculum, draw_condition
from soraj.data.native_size import apply_native_size_plan, plan_native_size
from soraj.models import patching
from soraj.models.latent_codec import encode_clip

CAPTION_BYTES = 1024  # utf-8 bytes per caption slot; a longer caption is refused
PACKERS = {
    "first_fit": grain.experimental.FirstFitPackIterDataset,
    "best_fit": grain.experimental.BestFitPackIterDataset,
}


# ---- The spec ----


@dataclasses.dataclass(frozen=True)
class PackedDataSpec:
    """Everything that shapes the packed stream; built from config.data by `spec_from_config`."""

    vae_factors: tuple[int, int]  # (ft, fs)
    patch_size: tuple[int, int, int]  # (pt, ph, pw)
    row_length: int  # L tokens per row
    max_segments: int  # S samples per row at most
    rows_per_batch: int  # B
    token_budget: int  # latent patch tokens per sample; larger clips are downscaled
    max_frames: int
    min_frames: int = 1
    packing: str = "first_fit"
    packing_bins: int = 0  # rows packed at once (0: 4·B); more bins, less padding
    square_crop: bool = False  # centre-crop every clip to a square first (the crop baseline)
    caption_dropout: float = 0.1  # per sample: its caption becomes "" (the null text)
    # Per sample, before the dropout: the caption field that trains, by odds (caption_versions).
    caption_mix: tuple = DEFAULT_CAPTION_MIX
    # Per video sample: which latent frames are given as conditions (frame_masks.py).
    masks: MaskCurriculum = MaskCurriculum()
    # Class-conditional training: records bring "label" in [0, num_classes); a dropped caption
    # also drops the label to num_classes, the null label. 0: text-conditional.
    num_classes: int = 0
    # NaViT token dropping: the dropped share of a sample's tokens grows linearly with its token
    # count, from drop_rate_low at drop_tokens_low to drop_rate_high at drop_tokens_high.
    drop_rate_low: float = 0.0
    drop_rate_high: float = 0.0
    drop_tokens_low: int = 1
    drop_tokens_high: int = 1
    max_bad_record_ratio: float = 0.01
    min_records_for_ratio: int = 100
    seed: int = 0
    workers: int = 0  # grain worker processes for reading and cutting clips; 0 = in-process

    def __post_init__(self):
        positive = dict(
            row_length=self.row_length,
            max_segments=self.max_segments,
            rows_per_batch=self.rows_per_batch,
            token_budget=self.token_budget,
            max_frames=self.max_frames,
            min_frames=self.min_frames,
        )
        for name, value in positive.items():
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.packing not in PACKERS:
            raise ValueError(f"packing={self.packing!r}; allowed: {', '.join(PACKERS)}")
        if self.token_budget > self.row_length:
            raise ValueError(
                f"token_budget={self.token_budget} exceeds the row length L={self.row_length}: "
                "a sample must fit in one row"
            )
        if self.packing_bins and self.packing_bins < self.rows_per_batch:
            raise ValueError(
                f"packing_bins={self.packing_bins} must be 0 (4·B) or ≥ rows_per_batch="
                f"{self.rows_per_batch}"
            )
        object.__setattr__(self, "caption_mix", check_caption_mix(self.caption_mix))
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        for name in ("drop_rate_low", "drop_rate_high"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 1 <= self.drop_tokens_low <= self.drop_tokens_high:
            raise ValueError(
                f"need 1 ≤ drop_tokens_low ({self.drop_tokens_low}) ≤ drop_tokens_high "
                f"({self.drop_tokens_high})"
            )
        if self.num_classes < 0:
            raise ValueError(
                f"num_classes must be ≥ 0 (0: text-conditional), got {self.num_classes}"
            )
        if self.workers < 0:
            raise ValueError(f"workers must be ≥ 0, got {self.workers}")

    @property
    def bins(self) -> int:
        return self.packing_bins or 4 * self.rows_per_batch


def spec_from_config(
    data, vae_factors, patch_size, rows_per_batch: int, seed: int, num_classes: int = 0
):
    """PackedDataSpec from config.data (see soraj/configs/t2v.py)."""
    return PackedDataSpec(
        vae_factors=tuple(vae_factors),
        patch_size=tuple(patch_size),
        row_length=data.row_length,
        max_segments=data.max_segments,
        rows_per_batch=rows_per_batch,
        token_budget=data.token_budget,
        max_frames=data.max_frames,
        min_frames=data.min_frames,
        packing=data.packing,
        packing_bins=data.packing_bins,
        square_crop=data.square_crop,
        caption_dropout=data.caption_dropout,
        caption_mix=data.get("caption_mix", DEFAULT_CAPTION_MIX),
        masks=MaskCurriculum.from_config(data.masks) if "masks" in data else MaskCurriculum(),
        num_classes=num_classes,
        drop_rate_low=data.token_drop.rate_low,
        drop_rate_high=data.token_drop.rate_high,
        drop_tokens_low=data.token_drop.tokens_low,
        drop_tokens_high=data.token_drop.tokens_high,
        max_bad_record_ratio=data.max_bad_record_ratio,
        seed=seed,
        workers=data.workers,
    )


# ---- Per example, in the workers ----


def caption_bytes(caption: str) -> np.ndarray:
    """A caption as a (1, CAPTION_BYTES) zero-padded utf-8 slot."""
    encoded = caption.encode("utf-8")
    if len(encoded) > CAPTION_BYTES:
        raise ValueError(f"caption of {len(encoded)} utf-8 bytes; at most {CAPTION_BYTES}")
    slot = np.zeros((1, CAPTION_BYTES), np.uint8)
    slot[0, : len(encoded)] = np.frombuffer(encoded, np.uint8)
    return slot


def caption_from_bytes(slot: np.ndarray) -> str:
    return bytes(np.asarray(slot, np.uint8)).rstrip(b"\0").decode("utf-8")


def centre_square(video: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) → (T, s, s, 3), s = min(H, W), cut from the middle."""
    h, w = video.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return video[:, top : top + side, left : left + side]


def token_drop_rate(spec: PackedDataSpec, num_tokens: int) -> float:
    span = spec.drop_tokens_high - spec.drop_tokens_low
    where = 1.0 if span == 0 else np.clip((num_tokens - spec.drop_tokens_low) / span, 0.0, 1.0)
    return float(spec.drop_rate_low + where * (spec.drop_rate_high - spec.drop_rate_low))


def kept_tokens(spec: PackedDataSpec, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the tokens a sample keeps after NaViT dropping (at least one)."""
    rate = token_drop_rate(spec, num_tokens)
    if rate == 0.0:
        return np.arange(num_tokens, dtype=np.int32)
    keep = max(1, round(num_tokens * (1.0 - rate)))
    return np.sort(rng.choice(num_tokens, keep, replace=False)).astype(np.int32)


class PrepareExample:
    """Decoded example → what the main process needs to encode and pack it. Picklable, runs in
    grain workers; all randomness comes from grain's per-example rng."""

    def __init__(self, spec: PackedDataSpec, null_text=None):
        self.spec = spec
        self.null_text = null_text  # cached (states (M, E), mask (M,)) of "", for cached text

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        spec = self.spec
        caption = pick_caption(example, spec.caption_mix, rng)
        dropped = rng.random() < spec.caption_dropout
        prepared = {
            "replaced": np.reshape(example.get("replaced", 0), (1,)).astype(np.int32),
        }
        if "latents" in example:  # a latent cache record: its native-size plan ran when cached
            latents = np.asarray(example["latents"], np.float32)
            grid = patching.grid_shape(latents.shape[:3], spec.patch_size)
            prepared["latents"] = latents
        else:
            video = example["video"]
            if spec.square_crop:
                video = centre_square(video)
            plan = plan_native_size(
                video.shape[:3],
                spec.vae_factors,
                spec.patch_size,
                spec.token_budget,
                spec.max_frames,
                rng,
                spec.min_frames,
            )
            prepared["video"] = apply_native_size_plan(video, plan)
            grid = plan.latent_grid
        condition = draw_condition(spec.masks, int(grid[0]), rng)
        if condition.given.any():  # masked samples drop text by the curriculum's own odds
            dropped = condition.drop_text
        prepared.update(
            frame_given=condition.given,  # (F,)
            frame_t=condition.t,  # (F,)
            mask_type=np.asarray([condition.mask_type], np.int32),  # (1,)
            caption=caption_bytes("" if dropped else caption),  # (1, CAPTION_BYTES)
        )
        if spec.num_classes:
            label = int(example["label"])
            if not 0 <= label < spec.num_classes:
                raise ValueError(f"label {label} outside [0, {spec.num_classes}) (num_classes)")
            prepared["label"] = np.asarray([spec.num_classes if dropped else label], np.int32)
        if "text_states" in example:
            states, mask = (
                self.null_text if dropped else (example["text_states"], example["text_mask"])
            )
            prepared.update(text=np.asarray(states), text_mask=np.asarray(mask, bool))
        if int(np.prod(grid)) > spec.token_budget:  # cached latents were planned elsewhere
            raise ValueError(
                f"a cached sample has {int(np.prod(grid))} tokens (grid {tuple(grid)}), over "
                f"token_budget={spec.token_budget}; raise config.data.token_budget"
            )
        prepared["grid"] = np.asarray([grid], np.int32)  # (1, 3)
        prepared["keep"] = kept_tokens(spec, int(np.prod(grid)), rng)
        return prepared


# ---- Per example, in the main process ----


patchify = jax.jit(patching.patchify, static_argnames="patch_size")


class EncodeExample:
    """Prepared example → packable tokens. The VAE runs here, in the main process, compiled once
    per clip shape; cached latents skip it."""

    def __init__(self, codec, patch_size):
        self.codec, self.patch_size = codec, tuple(patch_size)

    def __call__(self, prepared: dict) -> dict:
        if "video" in prepared:
            latents = encode_clip(self.codec, prepared["video"])  # (T', H', W', C)
        else:
            latents = prepared["latents"]
        tokens, coords = patchify(latents, patch_size=self.patch_size)  # (N, P), (N, 3)
        keep = prepared["keep"]
        coords = np.asarray(coords, np.int32)[keep]  # (n, 3)
        frame = coords[:, 0]  # each token's patch frame
        packable = {
            "latents": np.asarray(tokens, np.float32)[keep],  # (n, P)
            "coords": coords,
            "cond_mask": prepared["frame_given"][frame],  # (n,)
            "cond_t": prepared["frame_t"][frame],  # (n,)
        }
        for key in ("caption", "grid", "replaced", "mask_type", "label", "text", "text_mask"):
            if key in prepared:
                packable[key] = prepared[key]
        return packable


# ---- Packed rows ----


def _length_struct(spec: PackedDataSpec, text_tokens: int | None) -> dict:
    L, S = spec.row_length, spec.max_segments
    lengths = {"latents": L, "coords": L, "cond_mask": L, "cond_t": L}
    lengths.update(caption=S, grid=S, replaced=S, mask_type=S)
    if spec.num_classes:
        lengths["label"] = S
    if text_tokens is not None:
        lengths.update(text=S * text_tokens, text_mask=S * text_tokens)
    return lengths


class PackedRow:
    """grain's packed row → one row of the packed batch (docs/architecture.md §4), plus caption
    bytes and counts."""

    def __init__(self, spec: PackedDataSpec):
        self.spec = spec

    def __call__(self, packed: dict) -> dict:
        S = self.spec.max_segments
        row = {
            "latents": packed["latents"],  # (L, P)
            "coords": packed["coords"],  # (L, 3)
            "segment_ids": packed["latents_segment_ids"],  # (L,) 1..S, 0 = padding
            "cond_mask": packed["cond_mask"],  # (L,) given tokens: no loss
            "cond_t": packed["cond_t"],  # (L,) a token's own t, or FROM_SAMPLE (< 0)
            "mask_type": packed["mask_type"],  # (S,) index into frame_masks.MASK_TYPES
            "caption": packed["caption"],  # (S, CAPTION_BYTES)
            "grid": packed["grid"],  # (S, 3); unused slots are (0, 0, 0)
            "replaced": packed["replaced"],  # (S,)
        }
        if "label" in packed:
            row["labels"] = packed["label"]  # (S,); unused slots hold 0 and no tokens
        if "text" in packed:
            row["text"] = packed["text"].reshape(S, -1, packed["text"].shape[-1])  # (S, M, E)
            row["text_mask"] = packed["text_mask"].reshape(S, -1)  # (S, M)
        return row


# ---- The pipeline ----


def host_shard(dataset: grain.MapDataset, shard: grain.sharding.ShardOptions | None = None):
    """One shard's records (this process's by default): an equal share for every shard, the
    remainder dropped."""
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    per_shard = len(dataset) // shard.shard_count
    if per_shard < 1:
        raise ValueError(
            f"{len(dataset)} records cannot give each of {shard.shard_count} data shards one record"
        )
    return dataset[shard.shard_index : per_shard * shard.shard_count : shard.shard_count]


def packed_dataset(
    source, spec: PackedDataSpec, codec, null_text=None, shard=None
) -> grain.IterDataset:
    """The infinite, deterministic, checkpointable IterDataset of packed batches of one data
    shard (grain ShardOptions; default: this process's):
    latents (B, L, P), coords (B, L, 3), segment_ids (B, L), cond_mask (B, L), cond_t (B, L),
    mask_type (B, S), grid (B, S, 3),
    caption (B, S, CAPTION_BYTES) or text (B, S, M, E) + text_mask (B, S, M), replaced (B, S),
    and the run totals bad_records and records."""
    unit_h, unit_w = (spec.vae_factors[1] * p for p in spec.patch_size[1:])
    records = ReplacingSource(source, check_clip(unit_h, unit_w))
    dataset = host_shard(grain.MapDataset.source(records), shard)
    dataset = dataset.shuffle(seed=spec.seed).repeat()
    dataset = dataset.random_map(PrepareExample(spec, null_text), seed=spec.seed + 1)
    stream = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if spec.workers:
        # grain's workers read absl flags; outside an absl app (a notebook, pytest) nobody
        # parsed them, so take the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=spec.workers))
    stream = stream.map(EncodeExample(codec, spec.patch_size))
    text_tokens = None if null_text is None else int(np.shape(null_text[0])[0])
    stream = PACKERS[spec.packing](
        stream,
        length_struct=_length_struct(spec, text_tokens),
        num_packing_bins=spec.bins,
        seed=spec.seed + 2,
        max_sequences_per_bin=spec.max_segments,
    )
    stream = stream.map(PackedRow(spec)).batch(spec.rows_per_batch, drop_remainder=True)
    return BadRecordMonitor(stream, spec.max_bad_record_ratio, spec.min_records_for_ratio)
