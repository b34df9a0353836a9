"""A host's batches as the concatenation of fixed logical data shards.

The global batch of a step is the rows of shards 0, 1, ..., N - 1 in order, each shard its own
packed_dataset stream. A process reads the N / P shards of its own rows, so the global batch
(and the whole run) is the same on 1 process or on P, and a run can resume on another number of
hosts as long as P divides N. config.data.shards = 0 gives one shard per process.
"""

import dataclasses
import json

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from soraj.data.packed_pipeline import PackedDataSpec, packed_dataset

# Run totals that each shard counts on its own; a host batch reports their sum.
RUN_TOTALS = ("bad_records", "records")


def shard_plan(num_shards: int, global_rows: int, process_index: int, process_count: int):
    """(this process's shard indices, the shard count, rows per shard); num_shards 0 means one
    shard per process."""
    num_shards = num_shards or process_count
    if num_shards < 1 or num_shards % process_count:
        raise ValueError(
            f"config.data.shards={num_shards} must be a positive multiple of the process count "
            f"{process_count} (or 0: one shard per process)"
        )
    if global_rows % num_shards:
        raise ValueError(
            f"config.batch_size={global_rows} rows cannot be split evenly over {num_shards} "
            "data shards: make it a multiple of config.data.shards"
        )
    per_process = num_shards // process_count
    first = process_index * per_process
    return tuple(range(first, first + per_process)), num_shards, global_rows // num_shards


class HostBatches:
    """Iterator over this process's rows of each global batch, checkpointable like a grain
    iterator: get_state()/set_state() hold every shard's position by shard index."""

    def __init__(self, source, spec: PackedDataSpec, codec, null_text=None, num_shards: int = 0):
        shards, count, rows = shard_plan(
            num_shards, spec.rows_per_batch, jax.process_index(), jax.process_count()
        )
        shard_spec = dataclasses.replace(spec, rows_per_batch=rows)
        self.shard_indices = shards
        self.iterators = [
            iter(
                packed_dataset(
                    source,
                    shard_spec,
                    codec,
                    null_text,
                    grain.sharding.ShardOptions(index, count, drop_remainder=True),
                )
            )
            for index in shards
        ]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batches = [next(iterator) for iterator in self.iterators]
        host_batch = {
            key: np.concatenate([batch[key] for batch in batches])
            for key in batches[0]
            if key not in RUN_TOTALS
        }
        for key in RUN_TOTALS:
            host_batch[key] = np.int64(sum(int(batch[key]) for batch in batches))
        return host_batch

    def get_state(self) -> dict:
        """This process's shard positions."""
        return {
            "shards": {
                str(index): iterator.get_state()
                for index, iterator in zip(self.shard_indices, self.iterators, strict=True)
            }
        }

    def set_state(self, state: dict) -> None:
        stored = state.get("shards", {})
        missing = [index for index in self.shard_indices if str(index) not in stored]
        if missing:
            raise ValueError(
                f"the data state has shards {sorted(stored, key=int)}, but this process reads "
                f"shards {list(self.shard_indices)}: config.data.shards or the process count "
                "changed in a way the stored positions cannot follow"
            )
        for index, iterator in zip(self.shard_indices, self.iterators, strict=True):
            iterator.set_state(stored[str(index)])


def all_shard_states(host_state: dict) -> dict:
    """Every process's shard positions merged into one state, the same on every process (a
    collective: all processes call it together). Process 0 writes it in the checkpoint, and
    on restore each process takes its own shards from it, whatever the process count."""
    if jax.process_count() == 1:
        return host_state
    encoded = np.frombuffer(json.dumps(host_state).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(encoded.size))  # (P,)
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)  # (P, longest)
    merged = {}
    for row, length in zip(gathered, lengths, strict=True):
        merged.update(json.loads(bytes(row[: int(length)]).decode())["shards"])
    return {"shards": merged}
