"""Bad records: replaced where they are read, counted where batches come out.

A corrupt or undecodable clip must not change a batch's shape, so `ReplacingSource` swaps it
for the next readable record before any batching, and says how many it skipped in the
example's "replaced" field. `BadRecordMonitor` sums those counts over the run (its iterator
state carries them, so a resumed run keeps counting) and stops the job with a clear error
once the share of bad records passes a threshold: a few broken files are normal, a broken
dataset is not.
"""

import logging
from collections.abc import Callable

import grain
import numpy as np

log = logging.getLogger(__name__)


# ---- Reading with replacement ----


class ReplacingSource(grain.sources.RandomAccessDataSource):
    """source[i], or else source[i + 1], source[i + 2], ... (mod len): the first record that reads
    and passes `check`, with "replaced": how many were skipped. Deterministic in i, so every
    epoch and every resume replaces a bad record by the same good one."""

    def __init__(self, source, check: Callable[[dict], None], max_tries: int = 16):
        if max_tries < 1:
            raise ValueError(f"max_tries must be ≥ 1, got {max_tries}")
        if len(source) < 1:
            raise ValueError(f"the source {source!r} is empty")
        self.source, self.check, self.max_tries = source, check, max_tries

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        errors = []
        for skipped in range(min(self.max_tries, len(self.source))):
            position = (int(index) + skipped) % len(self.source)
            try:
                example = self.source[position]
                self.check(example)
            except Exception as error:  # any failure to read or decode is a bad record
                log.warning("bad record %d of %r: %s: %s", position, self.source, *_why(error))
                errors.append(f"record {position}: {type(error).__name__}: {error}")
                continue
            return dict(example, replaced=np.int32(skipped))
        raise RuntimeError(
            f"records {index}..{index + len(errors) - 1} of {self.source!r} are all unreadable "
            f"({len(errors)} tries); the first errors: {errors[:3]}"
        )

    def __repr__(self) -> str:
        return f"ReplacingSource({self.source!r}, max_tries={self.max_tries})"


def _why(error: Exception) -> tuple[str, str]:
    return type(error).__name__, str(error)


def check_clip(min_height: int, min_width: int) -> Callable[[dict], None]:
    """A check for decoded examples: a uint8 (T, H, W, 3) video of at least one latent patch per
    side and a str caption; cached records instead bring finite f32 (T', H', W', C) latents."""

    def check(example: dict) -> None:
        if "latents" in example:
            latents = np.asarray(example["latents"])
            if latents.ndim != 4 or not np.all(np.isfinite(latents)):
                raise ValueError(f"latents must be finite (T', H', W', C), got {latents.shape}")
        else:
            video = example.get("video")
            if not isinstance(video, np.ndarray) or video.dtype != np.uint8:
                raise ValueError(f"video must be a uint8 array, got {type(video).__name__}")
            if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
                raise ValueError(f"video must be (T, H, W, 3), got {video.shape}")
            if video.shape[1] < min_height or video.shape[2] < min_width:
                raise ValueError(
                    f"frames of {video.shape[1]}×{video.shape[2]} are smaller than one latent "
                    f"patch ({min_height}×{min_width})"
                )
        if not isinstance(example.get("caption"), str):
            raise ValueError(f"caption must be a str, got {type(example.get('caption')).__name__}")

    return check


# ---- Counting and the threshold ----


class BadRecordMonitor(grain.IterDataset):
    """Passes batches through, adding "bad_records" and "records" (run totals) to each, and
    raises once bad ÷ (bad + good) > max_ratio after at least min_records records."""

    def __init__(self, parent: grain.IterDataset, max_ratio: float, min_records: int = 100):
        super().__init__(parent)
        if not 0.0 <= max_ratio < 1.0:
            raise ValueError(f"max_ratio must be in [0, 1), got {max_ratio}")
        if min_records < 1:
            raise ValueError(f"min_records must be ≥ 1, got {min_records}")
        self.max_ratio, self.min_records = max_ratio, min_records

    def __iter__(self):
        return _MonitorIterator(self._parent.__iter__(), self.max_ratio, self.min_records)


class _MonitorIterator(grain.DatasetIterator):
    def __init__(self, parent, max_ratio: float, min_records: int):
        super().__init__(parent)
        self.max_ratio, self.min_records = max_ratio, min_records
        self.good = self.bad = 0

    def __next__(self) -> dict:
        batch = next(self._parent)
        self.good += int(np.sum(batch["grid"][..., 0] > 0))  # real segments in the batch
        self.bad += int(np.sum(batch["replaced"]))
        seen = self.good + self.bad
        if seen >= self.min_records and self.bad > self.max_ratio * seen:
            raise RuntimeError(
                f"{self.bad} of {seen} records read so far were bad ({self.bad / seen:.1%}), "
                f"more than the allowed {self.max_ratio:.1%} (config.data.max_bad_record_ratio); "
                "the warnings above name each bad record"
            )
        return dict(batch, bad_records=np.int64(self.bad), records=np.int64(seen))

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "good": self.good, "bad": self.bad}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.good, self.bad = int(state["good"]), int(state["bad"])
