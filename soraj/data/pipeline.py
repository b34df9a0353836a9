"""The grain input pipeline: per-host shard → shuffle → repeat → per-example transforms → batch.

The iterator's state is a small dict that goes into every checkpoint, so a restarted run reads
exactly the batches the uninterrupted run would have read.
"""

from collections.abc import Callable

import grain
import jax
import numpy as np


def batch_iterator(
    source,
    batch_size: int,
    seed: int,
    random_transform: Callable[[dict, np.random.Generator], dict] | None = None,
    num_threads: int = 2,
):
    """An infinite, deterministic, checkpointable iterator of host-local batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    dataset = grain.MapDataset.source(source)
    # Each process reads its own shard; every host sees the same number of batches.
    dataset = dataset[jax.process_index() :: jax.process_count()]
    if len(dataset) < batch_size:
        raise ValueError(
            f"the dataset shard has {len(dataset)} examples, fewer than one batch of {batch_size}"
        )
    dataset = dataset.shuffle(seed=seed).repeat()
    if random_transform is not None:
        dataset = dataset.random_map(random_transform, seed=seed + 1)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4)
    return iter(dataset.to_iter_dataset(read_options))


def caption_dropout(probability: float) -> Callable[[dict, np.random.Generator], dict]:
    """Replaces a caption by the empty (null) text with `probability`, for classifier-free
    guidance; the original stays under "full_caption"."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"caption dropout must be in [0, 1), got {probability}")

    def drop(example: dict, rng: np.random.Generator) -> dict:
        example = dict(example, full_caption=example["caption"])
        if rng.random() < probability:
            example["caption"] = ""
        return example

    return drop
