"""Videos longer than the DiT's window (`soraj generate --seconds S`): extension with history.

The first window comes from the prompt (or from --image); every next window is a forward
extension (soraj/prompting.py) given the last `given` frames of the video so far, and adds
its `frames − given` new frames. The DiT sees one window at a time and the VAE decodes one
window at a time, so memory does not grow with the length: only the uint8 frames do.
"""

import dataclasses
import math

import numpy as np

from soraj.sampling_progress import status


@dataclasses.dataclass(frozen=True)
class LongPlan:
    total_frames: int  # the output's frames: round(seconds × fps)
    window: int  # frames per window (--frames)
    given: int  # frames of history each extension is given

    def __post_init__(self):
        if self.total_frames < self.window:
            raise ValueError(
                f"{self.total_frames} frames is shorter than one window of {self.window}"
            )
        if not 1 <= self.given < self.window:
            raise ValueError(f"given frames must be in [1, {self.window - 1}], got {self.given}")

    @property
    def new_per_window(self) -> int:
        return self.window - self.given

    @property
    def num_windows(self) -> int:
        return 1 + math.ceil((self.total_frames - self.window) / self.new_per_window)

    @property
    def seams(self) -> list[int]:
        """The output frames where each extension's new frames begin."""
        starts = [self.window + i * self.new_per_window for i in range(self.num_windows - 1)]
        return [s for s in starts if s < self.total_frames]


def total_frames(seconds: float, fps: float) -> int:
    return round(seconds * fps)


def generate_long(sample_window, builder, first_plan, plan: LongPlan, seed: int):
    """The long video (uint8 (total, H, W, 3)) and the largest difference between given and
    sampled latents over its windows. `sample_window(plan, seed)` → (latents, video) samples
    one window (Generator.sample_window with the prompt and settings bound); window i is
    sampled with seed + i."""
    status(f"window 1/{plan.num_windows}: {plan.window} frames from the prompt")
    latents, window = sample_window(first_plan, seed)
    given_error = float(
        np.abs(latents - first_plan.reference)[first_plan.level == 0].max(initial=0)
    )
    video = first_plan.assemble(window)
    for index in range(1, plan.num_windows):
        status(
            f"window {index + 1}/{plan.num_windows}: {plan.new_per_window} new frames after the "
            f"last {plan.given} (video so far {len(video)} frames)"
        )
        extension = builder.extend_forward(video[-plan.given :], plan.given)
        latents, window = sample_window(extension, seed + index)
        error = np.abs(latents - extension.reference)[extension.level == 0]
        given_error = max(given_error, float(error.max(initial=0.0)))
        # The given frames stay as they were; the window adds only its new frames.
        video = np.concatenate([video, window[plan.given :]])
    return video[: plan.total_frames], given_error
