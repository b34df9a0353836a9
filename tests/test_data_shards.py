"""Logical data shards: a host batch is its shards' rows in order, so the global batch does not
depend on the process count; positions round-trip per shard; bad plans are refused."""

import grain
import numpy as np
import pytest
from test_packed_pipeline import VAE_DIR, MixedShapes, spec

from soraj.data import data_shards
from soraj.data.data_shards import HostBatches, shard_plan
from soraj.data.packed_pipeline import packed_dataset
from soraj.models.latent_codec import LatentCodec


@pytest.fixture(scope="module")
def codec():
    return LatentCodec.load(VAE_DIR)


def test_shard_plan_splits_shards_and_rows_by_process():
    assert shard_plan(0, 8, 0, 1) == ((0,), 1, 8)
    assert shard_plan(4, 8, 0, 1) == ((0, 1, 2, 3), 4, 2)
    assert shard_plan(4, 8, 1, 2) == ((2, 3), 4, 2)
    assert shard_plan(0, 8, 1, 2) == ((1,), 2, 4)


def test_shard_plan_refuses_shards_the_processes_or_rows_cannot_split():
    with pytest.raises(ValueError, match="multiple of the process count 2"):
        shard_plan(3, 6, 0, 2)
    with pytest.raises(ValueError, match="batch_size=6 rows cannot be split evenly over 4"):
        shard_plan(4, 6, 0, 1)


def test_a_host_batch_is_each_shards_own_stream_in_order(codec):
    two_shards = HostBatches(MixedShapes(16), spec(rows_per_batch=4), codec, num_shards=2)
    by_shard = [
        iter(
            packed_dataset(
                MixedShapes(16),
                spec(rows_per_batch=2),
                codec,
                shard=grain.sharding.ShardOptions(index, 2, drop_remainder=True),
            )
        )
        for index in (0, 1)
    ]
    for _ in range(2):
        host_batch = next(two_shards)
        first, second = next(by_shard[0]), next(by_shard[1])
        assert host_batch["latents"].shape[0] == 4
        for key in ("latents", "segment_ids", "grid", "caption"):
            np.testing.assert_array_equal(
                host_batch[key], np.concatenate([first[key], second[key]])
            )
        assert host_batch["records"] == first["records"] + second["records"]


def test_positions_round_trip_and_a_mismatched_state_is_refused(codec):
    reader = HostBatches(MixedShapes(16), spec(rows_per_batch=4), codec, num_shards=2)
    next(reader)
    state = data_shards.all_shard_states(reader.get_state())  # one process: its own state
    expected = next(reader)
    resumed = HostBatches(MixedShapes(16), spec(rows_per_batch=4), codec, num_shards=2)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["latents"], expected["latents"])
    four = HostBatches(MixedShapes(16), spec(rows_per_batch=4), codec, num_shards=4)
    with pytest.raises(ValueError, match=r"this process reads shards \[0, 1, 2, 3\]"):
        four.set_state(state)
