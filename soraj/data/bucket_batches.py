"""Token accounting of the bucket baseline (soraj/data/buckets.py): a clip's tokens, a stream of
clips grouped into per-bucket batches, and pad-to-max, each with its padded and cropped tokens.
The API is listed in buckets.py's docstring."""

from __future__ import annotations

import numpy as np

from soraj.data.buckets import (
    PARTIAL_BATCHES,
    BucketTable,
    assign_bucket,
    check_token_setup,
    is_positive_int,
)
from soraj.data.native_size import plan_native_size

# ---- Tokens ----


def clip_tokens(num_frames, height, width, vae_factors, patch_size) -> int:
    """Patch tokens of a T×H×W clip: (1 + (T − 1)/ft)/pt · H/(fs·ph) · W/(fs·pw), all exact."""
    (ft, fs), (pt, ph, pw) = vae_factors, patch_size
    latent_frames = 1 + (num_frames - 1) // ft
    if (num_frames - 1) % ft or latent_frames % pt or height % (fs * ph) or width % (fs * pw):
        raise ValueError(
            f"clip {num_frames}×{height}×{width} is not whole patches: frames must be 1 + ft·k "
            f"(ft={ft}) with 1 + k a multiple of pt={pt}, height a multiple of fs·ph={fs * ph} "
            f"and width of fs·pw={fs * pw}"
        )
    return latent_frames // pt * (height // (fs * ph)) * (width // (fs * pw))


def native_tokens(native_shape, vae_factors, patch_size, token_budget, max_frames) -> int:
    """Tokens of the clip at its native size, longest length ≤ max_frames, within token_budget."""
    rng = np.random.default_rng(0)  # only picks the start frame, which the count ignores
    frames = min(int(native_shape[0]), max_frames)
    plan = plan_native_size(
        native_shape, vae_factors, patch_size, token_budget, max_frames, rng, min_frames=frames
    )
    return plan.num_tokens


# ---- Batching ----


def bucket_batches(
    shapes, vae_factors, patch_size, token_budget, table, seed=0, partial="pad", max_frames=None
) -> dict:
    """Groups a stream of native clip shapes into per-bucket batches, as a bucketed sampler does.

    Clips are assigned in stream order (rng = default_rng(seed)) and appended to their bucket's
    open batch, which is emitted when it holds batch_size clips. At the end the partial batches
    are, in table order, either padded to batch_size with empty rows (partial="pad": their
    tokens count as padded) or dropped (partial="drop": their clips count as dropped).
    bucket_waste = padded tokens ÷ all tokens in the batches the model runs, the same measure
    as packing's padding waste. Tokens lost to fitting a clip into its bucket are reported
    apart: cropped_tokens = Σ max(0, native − bucket tokens), upsampled_tokens the reverse.
    cropped_fraction = cropped_tokens ÷ native_tokens (all clips). Clips no bucket takes are
    dropped; dropped_tokens are their native tokens. The stream is one epoch: like Open-Sora's
    sampler, each epoch ends with up to one partial batch per bucket, so the padded share
    shrinks as the stream grows and grows with the number of buckets.
    """
    if partial not in PARTIAL_BATCHES:
        raise ValueError(f"partial must be one of {PARTIAL_BATCHES}, got {partial!r}")
    if not isinstance(table, BucketTable):
        raise ValueError(f"table must be a BucketTable, got {type(table).__name__}")
    check_token_setup(vae_factors, patch_size, token_budget)
    if max_frames is None:
        max_frames = max(t for counts in table.frames.values() for t in counts)
    tokens_of = {}
    for bucket in table.buckets():
        tokens_of[bucket] = clip_tokens(
            bucket.num_frames, bucket.height, bucket.width, vae_factors, patch_size
        )
        if tokens_of[bucket] > token_budget:
            raise ValueError(
                f"bucket {bucket} has {tokens_of[bucket]} tokens per clip, over "
                f"token_budget={token_budget}; raise the budget or shrink the bucket"
            )
    native = [native_tokens(s, vae_factors, patch_size, token_budget, max_frames) for s in shapes]

    rng = np.random.default_rng(seed)
    totals = dict.fromkeys(
        ("useful_tokens", "padded_tokens", "cropped_tokens", "upsampled_tokens"), 0
    )
    totals |= {"native_tokens": sum(native), "dropped_clips": 0, "dropped_tokens": 0}
    batches, open_batches = [], {}
    for index, shape in enumerate(shapes):
        assignment = assign_bucket(shape, table, rng)
        if assignment is None:
            totals["dropped_clips"] += 1
            totals["dropped_tokens"] += native[index]
            continue
        bucket = assignment.bucket
        totals["cropped_tokens"] += max(0, native[index] - tokens_of[bucket])
        totals["upsampled_tokens"] += max(0, tokens_of[bucket] - native[index])
        members = open_batches.setdefault(bucket, [])
        members.append(index)
        if len(members) == bucket.batch_size:
            batches.append((bucket, tuple(open_batches.pop(bucket))))
    for bucket in table.buckets():  # table order keeps the flush deterministic
        members = open_batches.get(bucket)
        if not members:
            continue
        if partial == "pad":
            batches.append((bucket, tuple(members)))
            totals["padded_tokens"] += (bucket.batch_size - len(members)) * tokens_of[bucket]
        else:
            totals["dropped_clips"] += len(members)
            totals["dropped_tokens"] += sum(native[i] for i in members)
    for bucket, members in batches:
        totals["useful_tokens"] += len(members) * tokens_of[bucket]
    batch_tokens = totals["useful_tokens"] + totals["padded_tokens"]
    return totals | {
        "batch_tokens": batch_tokens,
        "bucket_waste": totals["padded_tokens"] / batch_tokens if batch_tokens else 0.0,
        "cropped_fraction": totals["cropped_tokens"] / max(1, totals["native_tokens"]),
        "num_batches": len(batches),
        "batches": batches,
    }


def pad_to_max(shapes, vae_factors, patch_size, token_budget, max_frames, batch_size=1) -> dict:
    """Every clip at its native size, padded to the largest clip's token count, in batches of
    batch_size rows (a last partial batch padded with empty rows); pad_waste = padded ÷ all."""
    if not is_positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_token_setup(vae_factors, patch_size, token_budget)
    if not shapes:
        raise ValueError("shapes must hold at least one native (T, H, W) clip shape")
    native = [native_tokens(s, vae_factors, patch_size, token_budget, max_frames) for s in shapes]
    rows = -(-len(native) // batch_size) * batch_size
    batch_tokens = rows * max(native)
    return {
        "useful_tokens": sum(native),
        "padded_tokens": batch_tokens - sum(native),
        "batch_tokens": batch_tokens,
        "pad_waste": (batch_tokens - sum(native)) / batch_tokens,
        "max_clip_tokens": max(native),
    }
