"""Host-side first-fit packing of patchified samples into rows of L tokens (the packed batch of
docs/architecture.md §4)."""

import dataclasses

import numpy as np

# Per-token features of a sample, each with a leading N axis, packed along the row.
TOKEN_KEYS = ("latents", "coords", "noise")
REQUIRED_KEYS = (*TOKEN_KEYS, "text", "text_mask", "t")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one sample landed: tokens row[start : start + length] carry segment id `segment`."""

    row: int
    segment: int  # 1..S; 0 is padding
    start: int
    length: int


# ---- Validation ----


def _check(samples, row_length: int, max_segments: int) -> None:
    if row_length < 1 or max_segments < 1:
        raise ValueError(
            f"row_length L={row_length} and max_segments S={max_segments} must both be >= 1"
        )
    if not samples:
        raise ValueError("samples is empty; pass at least one sample to pack")
    text_shape = np.shape(samples[0]["text"]) if "text" in samples[0] else None
    for i, sample in enumerate(samples):
        missing = [k for k in REQUIRED_KEYS if k not in sample]
        if missing:
            raise ValueError(f"sample {i} lacks {missing}; required keys: {list(REQUIRED_KEYS)}")
        n = len(sample["latents"])
        if n > row_length:
            raise ValueError(
                f"sample {i} has {n} tokens, more than the row length L={row_length}; "
                "raise L or give the sample fewer tokens"
            )
        if n == 0:
            raise ValueError(f"sample {i} has no tokens; every sample needs at least one")
        for key in TOKEN_KEYS:
            if len(sample[key]) != n:
                raise ValueError(f"sample {i}: {key} has {len(sample[key])} tokens, latents {n}")
        if np.shape(sample["coords"])[1:] != (3,):
            raise ValueError(f"sample {i}: coords must be (N, 3), got {np.shape(sample['coords'])}")
        if np.shape(sample["t"]) not in ((), (n,)):
            raise ValueError(
                f"sample {i}: t must be a scalar or ({n},), got {np.shape(sample['t'])}"
            )
        if np.shape(sample["text"]) != text_shape:
            raise ValueError(
                f"sample {i}: text has shape {np.shape(sample['text'])}, sample 0 {text_shape}; "
                "all samples need the same (M, E) text shape"
            )
        if np.shape(sample["text_mask"]) != text_shape[:1]:
            raise ValueError(
                f"sample {i}: text_mask must be ({text_shape[0]},), "
                f"got {np.shape(sample['text_mask'])}"
            )


# ---- First fit ----


def first_fit(lengths, row_length: int, max_segments: int) -> list[Placement]:
    """Each length, in order, goes into the first open row with room for its tokens and a free
    segment slot; a new row opens when none has both. Segments number 1, 2, ... per row."""
    used, counts, placements = [], [], []  # tokens used and segments per row
    for n in lengths:
        row = next(
            (r for r in range(len(used)) if used[r] + n <= row_length and counts[r] < max_segments),
            None,
        )
        if row is None:
            row = len(used)
            used.append(0)
            counts.append(0)
        placements.append(Placement(row, counts[row] + 1, used[row], int(n)))
        used[row] += n
        counts[row] += 1
    return placements


# ---- Pack / unpack ----


def pack_samples(samples, row_length: int, max_segments: int, num_rows: int | None = None):
    """Pack per-sample dicts into the packed batch (docs/architecture.md §4), first-fit in list
    order.

    Each sample: latents (N, P), coords int (N, 3), noise (N, P), text (M, E) states or (M,)
    token ids (the same shape for all samples), text_mask bool (M,), t scalar or (N,);
    optional cond_mask bool (N,) and grid (3,) (default coords.max + 1: the full grid).

    Padding tokens get segment id 0 and zeros everywhere (t = 0, no cond); unused segment
    slots get zero text, an all-False text_mask and grid (0, 0, 0).

    Returns (batch, placements): batch holds latents, noise (B, L, P), coords (B, L, 3),
    t (B, L), segment_ids (B, L), cond_mask (B, L), text (B, S, M, ...), text_mask (B, S, M),
    grid (B, S, 3); placements[i] says where samples[i] went. B is num_rows when given (a
    static batch shape), else as many rows as first-fit needs.
    """
    _check(samples, row_length, max_segments)
    placements = first_fit([len(s["latents"]) for s in samples], row_length, max_segments)
    rows_needed = max(p.row for p in placements) + 1
    if num_rows is not None and rows_needed > num_rows:
        raise ValueError(
            f"the samples need {rows_needed} rows of L={row_length} tokens and S={max_segments} "
            f"segments, but num_rows={num_rows}"
        )
    B, L, S = num_rows or rows_needed, row_length, max_segments
    first = samples[0]
    text = np.asarray(first["text"])
    batch = {
        "latents": np.zeros((B, L, *np.shape(first["latents"])[1:]), np.float32),
        "noise": np.zeros((B, L, *np.shape(first["noise"])[1:]), np.float32),
        "coords": np.zeros((B, L, 3), np.int32),
        "t": np.zeros((B, L), np.float32),
        "segment_ids": np.zeros((B, L), np.int32),
        "cond_mask": np.zeros((B, L), bool),
        "text": np.zeros((B, S, *text.shape), text.dtype),
        "text_mask": np.zeros((B, S, text.shape[0]), bool),
        "grid": np.zeros((B, S, 3), np.int32),
    }
    for sample, p in zip(samples, placements, strict=True):
        tokens = slice(p.start, p.start + p.length)
        for key in TOKEN_KEYS:
            batch[key][p.row, tokens] = sample[key]
        batch["t"][p.row, tokens] = sample["t"]  # a scalar broadcasts to the sample's tokens
        batch["segment_ids"][p.row, tokens] = p.segment
        batch["cond_mask"][p.row, tokens] = sample.get("cond_mask", False)
        batch["text"][p.row, p.segment - 1] = sample["text"]
        batch["text_mask"][p.row, p.segment - 1] = sample["text_mask"]
        grid = sample.get("grid", np.max(sample["coords"], axis=0) + 1)
        batch["grid"][p.row, p.segment - 1] = grid
    return batch, placements


def unpack(packed, placements: list[Placement]) -> list[np.ndarray]:
    """Per-token outputs (B, L, ...) back to one (N_i, ...) array per sample, in input order."""
    packed = np.asarray(packed)
    return [packed[p.row, p.start : p.start + p.length] for p in placements]
