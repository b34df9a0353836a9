"""Training metrics: one JSON object per logged step in WORKDIR/metrics.jsonl, tensorboardX scalars,
and a tqdm progress bar. Only process 0 writes."""

import json
import time
from pathlib import Path

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str | Path, total_steps: int, initial_step: int, description: str):
        self.is_writer = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._last_time = time.perf_counter()
        self._last_step = initial_step
        if self.is_writer:
            self.workdir.mkdir(parents=True, exist_ok=True)
            # Append: a restarted run continues the same file from its restored step.
            self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115
            self._tensorboard = SummaryWriter(str(self.workdir / "tensorboard"))
        self.progress = tqdm.tqdm(
            total=total_steps,
            initial=initial_step,
            desc=description,
            dynamic_ncols=True,
            disable=not self.is_writer,
        )

    def write(self, step: int, metrics: dict, samples_per_step: int) -> dict:
        """Logs scalars for `step`; throughput is measured since the previous call."""
        now = time.perf_counter()
        steps = max(1, step - self._last_step)
        seconds = max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        record = {"step": int(step)}
        record.update({k: float(np.asarray(v)) for k, v in metrics.items()})
        record["steps_per_s"] = steps / seconds
        record["samples_per_s"] = steps * samples_per_step / seconds
        if self.is_writer:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
            for key, value in record.items():
                if key != "step":
                    self._tensorboard.add_scalar(key, value, step)
            self.progress.set_postfix(loss=f"{record['loss']:.4f}")
        return record

    def advance(self, steps: int = 1):
        self.progress.update(steps)

    def close(self):
        self.progress.close()
        if self.is_writer:
            self._jsonl.close()
            self._tensorboard.close()
