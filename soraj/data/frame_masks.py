"""The mask curriculum: per training sample, which latent frames are given and at which t.

One model learns every prompting mode (image to video, extension, loops, connecting, keyframes,
SDEdit) by seeing, per sample, some frames given as conditions (UL2 / Open-Sora style):
given frames carry no loss and are shown at t = 0 (or a little noise), the rest are
generated at the sample's drawn t. The sampler (soraj/diffusion/sampling.py: euler_sample's
generation levels) then reaches each mode by the same per-token timesteps.

A sample's condition is per frame (patch frames: latent frames / pt):
  given  bool (F,): the frame is a condition (no loss on its tokens);
  t      f32 (F,): the frame's own t, or FROM_SAMPLE (the sample's drawn t).
"""

import dataclasses

import numpy as np

FROM_SAMPLE = -1.0  # a frame at the sample's drawn t

# Mask types and their default shares in training (issue 13's starting table). "first_k" and
# "last_k" give k ~ U{1..⌈F/2⌉} frames (short clips: 2 of 3 latent frames carry motion to
# extend), "head_tail_k" k, k' ~ U{1..max(1, ⌊F/4⌋)} at each end.
MASK_SHARES = (
    ("text_to_video", 0.40),
    ("first_frame", 0.12),
    ("random_frame", 0.05),
    ("last_frame", 0.04),
    ("first_last", 0.05),
    ("first_k", 0.10),
    ("last_k", 0.06),
    ("head_tail_k", 0.08),
    ("keyframes", 0.05),
    ("every_rth", 0.02),
    ("independent", 0.03),
)
MASK_TYPES = tuple(name for name, _ in MASK_SHARES)
TEXT_ONLY = (("text_to_video", 1.0),)  # no masks: the trainer before the curriculum


@dataclasses.dataclass(frozen=True)
class MaskCurriculum:
    """How PrepareExample draws a sample's condition (config.data.masks)."""

    shares: tuple = TEXT_ONLY  # ((mask type, share), ...), normalised
    noisy_given: float = 0.25  # of masked samples: given frames at t ~ U(0, max_given_t)
    max_given_t: float = 0.1
    # Of masked samples: the text dropped, both dropped, the visual condition dropped (given
    # frames at t = 1: pure noise), so both guidance scales have an unconditional branch.
    drop_text: float = 0.05
    drop_both: float = 0.05
    drop_visual: float = 0.05

    def __post_init__(self):
        shares = tuple((str(name), float(share)) for name, share in self.shares)
        unknown = [name for name, _ in shares if name not in MASK_TYPES]
        if unknown or not shares:
            raise ValueError(f"mask types {unknown or '(none)'}; allowed: {', '.join(MASK_TYPES)}")
        if len({name for name, _ in shares}) != len(shares):
            raise ValueError(f"a mask type is listed twice in {shares}")
        if min(share for _, share in shares) < 0 or sum(share for _, share in shares) <= 0:
            raise ValueError(f"mask shares must be ≥ 0 with a positive sum, got {shares}")
        total = sum(share for _, share in shares)
        object.__setattr__(self, "shares", tuple((n, s / total) for n, s in shares))
        for name in ("noisy_given", "drop_text", "drop_both", "drop_visual"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.drop_text + self.drop_both + self.drop_visual > 1.0:
            raise ValueError("drop_text + drop_both + drop_visual must be ≤ 1")
        if not 0.0 <= self.max_given_t <= 1.0:
            raise ValueError(f"max_given_t must be in [0, 1], got {self.max_given_t}")

    @classmethod
    def from_config(cls, masks) -> "MaskCurriculum":
        return cls(**{f.name: masks[f.name] for f in dataclasses.fields(cls) if f.name in masks})


@dataclasses.dataclass(frozen=True)
class FrameCondition:
    mask_type: int  # index into MASK_TYPES
    given: np.ndarray  # bool (F,)
    t: np.ndarray  # f32 (F,), FROM_SAMPLE where the sample's drawn t applies
    drop_text: bool


def given_frames(mask_type: str, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """bool (F,): the frames a mask type gives, at least one frame left to generate."""
    F = num_frames
    given = np.zeros(F, bool)
    half, quarter = (F + 1) // 2, max(1, F // 4)
    if mask_type == "first_frame":
        given[0] = True
    elif mask_type == "random_frame":
        given[rng.integers(F)] = True
    elif mask_type == "last_frame":
        given[-1] = True
    elif mask_type == "first_last":
        given[[0, -1]] = True
    elif mask_type == "first_k":
        given[: rng.integers(1, half + 1)] = True
    elif mask_type == "last_k":
        given[F - rng.integers(1, half + 1) :] = True
    elif mask_type == "head_tail_k":
        given[: rng.integers(1, quarter + 1)] = True
        given[F - rng.integers(1, quarter + 1) :] = True
    elif mask_type == "keyframes":
        given = rng.random(F) < rng.uniform(0.1, 0.5)
    elif mask_type == "every_rth":
        given[rng.integers(F) % 2 :: int(rng.integers(2, 5))] = True
    if given.all():  # something must be generated
        given[rng.integers(F)] = False
    return given


def draw_condition(curriculum: MaskCurriculum, num_frames: int, rng) -> FrameCondition:
    """One sample's condition. A single frame (an image) is always text to image."""
    names = [name for name, _ in curriculum.shares]
    shares = np.array([share for _, share in curriculum.shares])
    name = "text_to_video" if num_frames == 1 else names[0]
    if num_frames > 1 and len(names) > 1:  # one type draws nothing: the stream stays as before
        name = names[rng.choice(len(names), p=shares)]
    t = np.full(num_frames, FROM_SAMPLE, np.float32)
    if name == "independent":  # Diffusion Forcing: every frame its own t, loss on all
        t = rng.uniform(0.0, 1.0, num_frames).astype(np.float32)
        return FrameCondition(MASK_TYPES.index(name), np.zeros(num_frames, bool), t, False)
    given = given_frames(name, num_frames, rng)
    drop_text = False
    if given.any():
        given_t = 0.0
        if rng.random() < curriculum.noisy_given:
            given_t = float(rng.uniform(0.0, curriculum.max_given_t))
        u = rng.random()  # [0, text) text dropped, [text, +both) both, [.., +visual) visual
        text_or_both = curriculum.drop_text + curriculum.drop_both
        drop_text = u < text_or_both
        if curriculum.drop_text <= u < text_or_both + curriculum.drop_visual:
            given_t = 1.0  # the visual condition dropped: given frames are pure noise
        t[given] = given_t
    return FrameCondition(MASK_TYPES.index(name), given, t, drop_text)
