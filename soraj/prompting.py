"""Prompting modes (Sora's report): image to video, extension forward and backward, connecting
two videos, seamless loops, SDEdit and keyframes, all from one model and one sampler.

Each mode is a `WindowPlan` over one latent window of the DiT: per latent frame a generation
level (1 generate, 0 given, s the SDEdit strength, euler_sample's c), the reference latents of
the given frames, which frames are a visual condition (dual guidance), and the input frames
that go before and after the decoded window in the output video.

The causal VAE encodes a clip's frame 0 alone and each later latent frame from ft frames with
their past, so latent frame 0 and later latent frames are different kinds. Given latents sit
only where their kind sits in training:
- given frames at the start of the window (forward extension; the head of a connection or a
  loop bridge) are re-encoded as a clip of their own, so their first latent is frame-0 kind
  and lands on window frame 0;
- given frames later in the window (backward extension; the tail of a connection or a loop
  bridge) are latents 1..k of the given video, encoded from its start with their past. The
  video's frame 0 is not given (its latent is frame-0 kind): the window generates its place;
- an image at pixel frame p > 0 gives latent frame j = ⌈p / ft⌉ as a still held over that
  latent's ft frames (the image repeated 1 + ft·j times, encoded, latent j kept).
"""

import dataclasses

import numpy as np
from PIL import Image

# ---- Inputs ----------------------------------------------------------------------------------


def fit_frames(video: np.ndarray, height: int, width: int) -> tuple[np.ndarray, str]:
    """uint8 (T, h, w, 3) → (T, height, width, 3): centre-cropped to the target's aspect ratio,
    then resized; with a sentence saying which was done."""
    h, w = video.shape[1:3]
    if (h, w) == (height, width):
        return video, f"{w}×{h}, used as it is"
    # The largest centre crop of the target's aspect ratio.
    crop_h, crop_w = h, w
    if w * height > h * width:  # wider than the target
        crop_w = round(h * width / height)
    elif w * height < h * width:  # taller
        crop_h = round(w * height / width)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    cropped = video[:, top : top + crop_h, left : left + crop_w]
    resized = np.stack(
        [
            np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS))
            for frame in cropped
        ]
    )
    note = f"{w}×{h}"
    if (crop_h, crop_w) != (h, w):
        note += f", centre-cropped to {crop_w}×{crop_h}"
    return resized, f"{note}, resized to {width}×{height}"


def pixel_frames(latent_frames: int, ft: int) -> int:
    """Pixel frames of a clip of `latent_frames` latent frames (1 + ft·(n − 1))."""
    return 1 + ft * (latent_frames - 1)


def latent_of_pixel(frame: int, ft: int) -> int:
    """The latent frame a pixel frame belongs to: 0 for frame 0, ⌈p / ft⌉ after."""
    return -(-frame // ft)


def default_given_frames(latent_frames: int, ft: int, forward: bool) -> int:
    """--given-frames' default for an extension: 1 + ft·k, k = max(1, (T' − 1) // 2), at most
    T' − 2 forward (k + 1 latent frames given) and T' − 1 backward (k given)."""
    k = max(1, (latent_frames - 1) // 2)
    return 1 + ft * min(k, latent_frames - 2 if forward else latent_frames - 1)


def bridge_given(latent_frames: int, ft: int) -> tuple[int, int]:
    """(frames of A's tail, frames of B's head) given to a connection or loop bridge: n latent
    frames each, n = max(1, T' // 4) as training's head_tail_k masks give."""
    n = max(1, latent_frames // 4)
    return pixel_frames(n, ft), 1 + ft * n


# ---- Plans -----------------------------------------------------------------------------------


@dataclasses.dataclass
class WindowPlan:
    """One window's conditions (T' latent frames) and how the output is assembled."""

    mode: str
    level: np.ndarray  # f32 (T',): 1 generate, 0 given, between: SDEdit strength
    reference: np.ndarray  # f32 (T', H', W', C): the given latents, 0 elsewhere
    visual: np.ndarray  # bool (T',): frames that are a visual condition
    before: np.ndarray  # uint8 (n, H, W, 3): input frames shown before the decoded window
    after: np.ndarray  # uint8 (m, H, W, 3): input frames shown after it
    inputs: dict = dataclasses.field(default_factory=dict)  # what the output JSON records

    def assemble(self, window_video: np.ndarray) -> np.ndarray:
        return np.concatenate([p for p in (self.before, window_video, self.after) if len(p)])


class PlanBuilder:
    """Builds each mode's WindowPlan for a window of `frames` × height × width. `encode` maps a
    uint8 clip (T, H, W, 3) to normalised latents (T', H', W', C)."""

    def __init__(self, encode, latent_shape: tuple, ft: int, frames: int):
        self.encode, self.ft, self.frames = encode, ft, frames
        self.latent_shape = tuple(latent_shape)  # (T', H', W', C)
        self.empty = np.zeros((0, 0, 0, 3), np.uint8)

    def _blank(self, mode: str) -> WindowPlan:
        T = self.latent_shape[0]
        return WindowPlan(
            mode,
            np.ones(T, np.float32),
            np.zeros(self.latent_shape, np.float32),
            np.zeros(T, bool),
            self.empty,
            self.empty,
        )

    def _give(self, plan: WindowPlan, start: int, latents) -> None:
        latents = np.asarray(latents, np.float32)
        stop = start + latents.shape[0]
        plan.reference[start:stop] = latents
        plan.level[start:stop] = 0.0
        plan.visual[start:stop] = True

    def text(self) -> WindowPlan:
        return self._blank("text")

    def images(self, images: list[tuple[np.ndarray, int]]) -> WindowPlan:
        """Keyframes: (uint8 image (H, W, 3), pixel frame) pairs."""
        plan = self._blank("image")
        for image, frame in images:
            j = latent_of_pixel(frame, self.ft)
            if plan.level[j] == 0:
                raise ValueError(f"two images fall on latent frame {j} (pixel frame {frame})")
            still = np.repeat(image[None], pixel_frames(j + 1, self.ft), axis=0)
            self._give(plan, j, self.encode(still)[j : j + 1])
        plan.inputs = {"image_frames": [int(frame) for _, frame in images]}
        return plan

    def extend_forward(self, video: np.ndarray, given: int) -> WindowPlan:
        """The window continues the video's last `given` frames (1 + ft·k)."""
        plan = self._blank("extend_forward")
        self._give(plan, 0, self.encode(video[-given:]))
        plan.before = video[:-given]
        plan.inputs = {"given_frames": given, "video_frames": len(video)}
        return plan

    def extend_backward(self, video: np.ndarray, given: int) -> WindowPlan:
        """The window leads into the video's first `given` frames (1 + ft·k): its latents 1..k
        end the window and the window generates the place of the video's frame 0."""
        plan = self._blank("extend_backward")
        k = (given - 1) // self.ft
        T = self.latent_shape[0]
        self._give(plan, T - k, self.encode(video[:given])[1:])
        plan.after = video[given:]
        plan.inputs = {"given_frames": given, "video_frames": len(video)}
        return plan

    def connect(self, first: np.ndarray, second: np.ndarray) -> WindowPlan:
        """A window from the first video's tail to the second's head, the gap generated."""
        plan = self._blank("connect")
        tail, head = bridge_given(self.latent_shape[0], self.ft)
        self._give(plan, 0, self.encode(first[-tail:]))
        k = (head - 1) // self.ft
        self._give(plan, self.latent_shape[0] - k, self.encode(second[:head])[1:])
        plan.before, plan.after = first[:-tail], second[head:]
        plan.inputs = {"given_tail": tail, "given_head": head}
        return plan

    def loop_bridge(self, video: np.ndarray, video_latents: np.ndarray) -> WindowPlan:
        """The bridge from a generated video's tail back to its head (its own latents 1..k).
        The output, the video's middle then the bridge, plays as a cycle."""
        plan = self._blank("loop")
        tail, head = bridge_given(self.latent_shape[0], self.ft)
        self._give(plan, 0, self.encode(video[-tail:]))
        k = (head - 1) // self.ft
        self._give(plan, self.latent_shape[0] - k, video_latents[1 : k + 1])
        plan.before = video[head:-tail]
        plan.inputs = {"given_tail": tail, "given_head": head}
        return plan

    def edit(self, video: np.ndarray, strength: float) -> WindowPlan:
        """SDEdit: every frame starts from the video noised to `strength` (0 < s ≤ 1)."""
        plan = self._blank("edit")
        plan.reference[:] = self.encode(video[: self.frames])
        plan.level[:] = strength
        plan.inputs = {"strength": strength}
        return plan
