"""The packed grain pipeline: native-size clips and images in the same rows, contents equal to
each clip encoded alone, per-segment caption drop, token dropping, host shards, determinism,
exact resume with 0 and 2 workers, and bad records."""

import dataclasses

import grain
import jax
import numpy as np
import pytest

from soraj.data import packed_pipeline
from soraj.data.bad_records import ReplacingSource, check_clip
from soraj.data.frame_masks import FROM_SAMPLE, MASK_TYPES, MaskCurriculum
from soraj.data.packed_pipeline import PackedDataSpec, caption_from_bytes, packed_dataset
from soraj.data.shapes import ShapesSource
from soraj.models import patching
from soraj.models.latent_codec import LatentCodec

VAE_DIR = "experiments/shapes/checkpoint/vae"  # the shipped tiny VAE: ft = fs = 4
PATCH = (1, 2, 2)


class MixedShapes(grain.sources.RandomAccessDataSource):
    """Wide 5-frame clips, tall 9-frame clips and wide images, each caption unique."""

    KINDS = ((5, 16, 32), (9, 32, 16), (1, 16, 32))

    def __init__(self, num_clips: int, bad=frozenset()):
        self.num_clips, self.bad, self.reads_of_bad = num_clips, bad, 0
        self.sources = [
            ShapesSource(num_clips, t, h, w, seed=3, split="all") for t, h, w in self.KINDS
        ]

    def __len__(self):
        return self.num_clips

    def __getitem__(self, index):
        index = int(index)
        if index in self.bad:
            self.reads_of_bad += 1
            raise OSError(f"clip {index} is corrupt")
        item = self.sources[index % 3][index]
        return {"video": item["video"], "caption": f"{item['caption']} (clip {index})"}


@pytest.fixture(scope="module")
def codec():
    return LatentCodec.load(VAE_DIR)


def spec(**changes):
    base = PackedDataSpec(
        vae_factors=(4, 4),
        patch_size=PATCH,
        row_length=40,
        max_segments=3,
        rows_per_batch=2,
        token_budget=40,
        max_frames=9,
        min_frames=9,
        caption_dropout=0.0,
        seed=5,
    )
    return dataclasses.replace(base, **changes)


def take(dataset, n):
    iterator = iter(dataset)
    return [next(iterator) for _ in range(n)]


def segments(batch):
    """(row, segment id, caption, grid, token slice) for every real segment of a batch."""
    found = []
    for row in range(batch["segment_ids"].shape[0]):
        for slot, grid in enumerate(batch["grid"][row]):
            if grid[0] == 0:
                continue
            tokens = np.flatnonzero(batch["segment_ids"][row] == slot + 1)
            found.append(
                (row, slot + 1, caption_from_bytes(batch["caption"][row, slot]), grid, tokens)
            )
    return found


# ---- Contents ----


def test_rows_mix_images_and_clips_and_equal_each_clip_encoded_alone(codec):
    source = MixedShapes(12)
    by_caption = {source[i]["caption"]: i for i in range(len(source))}
    batches = take(packed_dataset(source, spec(), codec), 4)
    encode = jax.jit(codec.encode)
    mixed_rows = 0
    for batch in batches:
        assert batch["latents"].shape[:2] == (2, 40)
        for row in range(2):
            frames = {grid[0] for r, _, _, grid, _ in segments(batch) if r == row}
            mixed_rows += 1 in frames and len(frames) > 1
        for row, _, caption, grid, tokens in segments(batch):
            # Reference: the clip on its own through the VAE and patchify, outside the pipeline.
            # Every clip fits the budget at its native size, so the plan keeps it whole.
            video = source[by_caption[caption]]["video"]
            expected, coords = patching.patchify(encode(codec.params, video[None])[0], PATCH)
            assert tuple(grid) == patching.grid_shape(
                codec.latent_shape(*video.shape[:3])[:3], PATCH
            )
            assert np.all(np.diff(tokens) == 1)  # one contiguous run per segment
            np.testing.assert_allclose(batch["latents"][row, tokens], expected, atol=1e-6)
            np.testing.assert_array_equal(batch["coords"][row, tokens], coords)
        padding = batch["segment_ids"] == 0
        assert not batch["latents"][padding].any() and not batch["cond_mask"].any()
    assert mixed_rows > 0  # images and clips shared a row


def test_caption_dropout_is_per_segment(codec):
    batches = take(packed_dataset(MixedShapes(30), spec(caption_dropout=0.5), codec), 6)
    rows_with_both = 0
    dropped = []
    for batch in batches:
        for row in range(2):
            captions = [c for r, _, c, _, _ in segments(batch) if r == row]
            dropped += [c == "" for c in captions]
            rows_with_both += "" in captions and any(captions)
    assert rows_with_both > 0
    assert 0.25 < np.mean(dropped) < 0.75  # 36 draws of p = 0.5


def test_token_dropping_rate_grows_with_token_count(codec):
    drop = spec(drop_rate_low=0.0, drop_rate_high=0.5, drop_tokens_low=16, drop_tokens_high=24)
    for batch in take(packed_dataset(MixedShapes(12), drop, codec), 3):
        for row, _, _, grid, tokens in segments(batch):
            n = int(np.prod(grid))
            rate = np.clip((n - 16) / 8, 0, 1) * 0.5  # closed form of the linear schedule
            assert len(tokens) == max(1, round(n * (1 - rate)))
            coords = batch["coords"][row, tokens]
            assert len({tuple(c) for c in coords}) == len(tokens)  # no token twice
            assert np.all(coords < grid) and np.all(coords >= 0)


# ---- Sharding, determinism and resume ----


def test_host_shards_are_disjoint_equal_and_drop_the_remainder(monkeypatch):
    dataset = grain.MapDataset.source(list(range(11)))
    shards = []
    for index in range(3):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        monkeypatch.setattr(jax, "process_count", lambda: 3)
        shards.append(list(packed_pipeline.host_shard(dataset)))
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(sum(shards, [])) == list(range(9))


def test_same_seed_same_batches_other_seed_other_batches(codec):
    first = take(packed_dataset(MixedShapes(12), spec(), codec), 2)
    again = take(packed_dataset(MixedShapes(12), spec(), codec), 2)
    other = take(packed_dataset(MixedShapes(12), spec(seed=6), codec), 2)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["caption"], other[0]["caption"])


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_state_round_trips(codec, workers):
    dataset = packed_dataset(MixedShapes(12), spec(workers=workers, caption_dropout=0.3), codec)
    grain.experimental.assert_equal_output_after_checkpoint(
        grain.experimental.LimitIterDataset(dataset, count=3)
    )


# ---- Bad records ----


def test_bad_records_are_replaced_counted_and_stop_the_job(codec):
    source = MixedShapes(12, bad=frozenset({2, 7}))
    by_caption = {source[i]["caption"]: i for i in range(12) if i not in source.bad}
    replacing = ReplacingSource(source, check_clip(8, 8))
    assert replacing[2]["caption"] == source[3]["caption"] and replacing[2]["replaced"] == 1
    assert replacing[3]["replaced"] == 0
    batches = take(packed_dataset(source, spec(max_bad_record_ratio=0.5), codec), 5)
    total = 0
    for batch in batches:
        for row, segment, caption, _, _ in segments(batch):
            replaced = batch["replaced"][row, segment - 1]
            # Only the records right after a bad one can stand in for it, each for one.
            assert replaced in (0, 1) and (replaced == 0 or by_caption[caption] in (3, 8))
            total += replaced
    real = sum(len(segments(b)) for b in batches)
    assert total > 0
    assert (batches[-1]["bad_records"], batches[-1]["records"]) == (total, total + real)
    strict = spec(max_bad_record_ratio=0.01, min_records_for_ratio=1)
    with pytest.raises(RuntimeError, match="were bad"):
        take(packed_dataset(MixedShapes(12, bad=frozenset(range(0, 12, 2))), strict, codec), 20)


def test_undecodable_clip_fails_the_check():
    check = check_clip(8, 8)
    with pytest.raises(ValueError, match="uint8"):
        check({"video": np.zeros((1, 8, 8, 3), np.float32), "caption": ""})
    with pytest.raises(ValueError, match="smaller than one latent patch"):
        check({"video": np.zeros((1, 4, 8, 3), np.uint8), "caption": ""})


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="exceeds the row length"):
        spec(token_budget=41)
    with pytest.raises(ValueError, match="allowed: first_fit, best_fit"):
        spec(packing="next_fit")
    with pytest.raises(ValueError, match="packing_bins"):
        spec(packing_bins=1)


def test_mask_curriculum_marks_given_frames_per_token(codec):
    # Every video sample first_k or independent; images stay text to image.
    curriculum = MaskCurriculum(shares=(("first_k", 0.5), ("independent", 0.5)), noisy_given=0.0)
    batches = take(packed_dataset(MixedShapes(24), spec(masks=curriculum), codec), 4)
    seen = set()
    for batch in batches:
        padding = batch["segment_ids"] == 0
        assert not batch["cond_mask"][padding].any() and not batch["cond_t"][padding].any()
        for row, segment, _, grid, tokens in segments(batch):
            name = MASK_TYPES[batch["mask_type"][row, segment - 1]]
            seen.add(name)
            frame = batch["coords"][row, tokens, 0]
            given, t = batch["cond_mask"][row, tokens], batch["cond_t"][row, tokens]
            if grid[0] == 1:
                assert name == "text_to_video" and not given.any() and np.all(t == FROM_SAMPLE)
            elif name == "first_k":  # the first k frames given at t = 0 (or 1: visual dropped)
                k = int(frame[given].max()) + 1
                assert 1 <= k <= (grid[0] + 1) // 2 and np.array_equal(given, frame < k)
                assert len(set(t[given].tolist())) == 1 and t[given][0] in (0.0, 1.0)
                assert np.all(t[~given] == FROM_SAMPLE)
            else:  # one t per frame, none given
                assert not given.any() and np.all((t >= 0) & (t <= 1))
                for f in range(grid[0]):
                    assert len(set(t[frame == f].tolist())) == 1
    assert seen == {"text_to_video", "first_k", "independent"}
