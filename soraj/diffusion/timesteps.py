"""Rectified-flow timesteps: logit-normal draws, resolution shifts, per-segment t, schedules."""

import dataclasses
import numbers

import jax
import jax.numpy as jnp

# Convention (docs/architecture.md §2): x_t = (1 - t)·x0 + t·ε, so t = 0 is clean data and
# t = 1 is noise.


# ---- Validation ----


def _check_positive(name, value):
    # Only concrete Python/NumPy scalars can be checked; traced arrays pass through unchecked.
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_static_count(name, value):
    """Raises ValueError unless `value` is a Python int >= 1: it fixes a shape or a loop
    length, so it must be known before tracing."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a Python int >= 1, got {value!r}.")


# ---- Drawing and shifting t ----


def logit_normal(rng, shape, mean=0.0, std=1.0):
    """t = sigmoid(mean + std·z), z ~ N(0, 1): mass in the middle of (0, 1), where the
    velocity is hardest to predict (SD3). Median is sigmoid(mean)."""
    if isinstance(std, numbers.Real) and std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}.")
    z = jax.random.normal(rng, shape, jnp.float32)
    return jax.nn.sigmoid(mean + std * z)


def shift_timesteps(t, shift):
    """Maps t -> shift·t / (1 + (shift - 1)·t). shift > 1 pushes t towards noise, which
    larger inputs need: more tokens keep more signal at the same t.

    This is the time shift of SD3 (Esser et al. 2024, "Scaling Rectified Flow
    Transformers", §5.3.2), written for this project's convention t = 1 is noise; Open-Sora
    and Flux use the same map (Flux's exp(mu) is this `shift`)."""
    _check_positive("shift", shift)
    t = jnp.asarray(t, jnp.float32)
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(num_tokens, base_tokens=256, base_shift=1.0, max_tokens=4096, max_shift=3.0):
    """shift(n) = base_shift + (n - base_tokens)·(max_shift - base_shift) / (max_tokens -
    base_tokens): linear in the token count n through the two anchors, extrapolated beyond.

    Flux interpolates its log-shift mu between the same kind of anchors (256 and 4096
    tokens); SD3's paper derives shift = sqrt(n / base_tokens) from matching noise levels
    across resolutions. The line is used here because it stays finite and near 1 for the
    few-token samples of tiny runs. The anchors must make it non-decreasing in n (more
    tokens, noisier t) and > 0 from one token up. Works on arrays.
    """
    if not max_tokens > base_tokens:
        raise ValueError(
            f"max_tokens must be greater than base_tokens, got {max_tokens!r} <= {base_tokens!r}."
        )
    _check_positive("base_shift", base_shift)
    _check_positive("max_shift", max_shift)
    if isinstance(base_shift, numbers.Real) and isinstance(max_shift, numbers.Real):
        if max_shift < base_shift:
            raise ValueError(
                f"max_shift must be >= base_shift so bigger samples get noisier t, "
                f"got {max_shift!r} < {base_shift!r}."
            )
        one_token_shift = base_shift - (max_shift - base_shift) * (base_tokens - 1) / (
            max_tokens - base_tokens
        )
        if not one_token_shift > 0:
            raise ValueError(
                f"these anchors give a shift of {one_token_shift:.3g} <= 0 for a 1-token "
                f"sample; raise base_shift or max_tokens, or lower max_shift."
            )
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    num_tokens = jnp.asarray(num_tokens, jnp.float32)
    return base_shift + slope * (num_tokens - base_tokens)


# ---- Packed rows ----


def per_segment_timesteps(
    rng,
    segment_ids,
    max_segments,
    cond_mask=None,
    mean=0.0,
    std=1.0,
    shift_by_tokens=False,
    shift=1.0,
    base_tokens=256,
    base_shift=1.0,
    max_tokens=4096,
    max_shift=3.0,
    cond_t=None,
):
    """One logit-normal t per (row, segment), broadcast to the segment's tokens.

    With `shift_by_tokens`, each segment's t is shifted by `resolution_shift` of its own
    token count (all its tokens, conditioning included: the count stands for its size);
    otherwise by the constant `shift`. Padding (segment id 0) and `cond_mask` tokens get
    t = 0; tokens with `cond_t` (f32 (B, L)) ≥ 0 get that t instead (the mask curriculum's
    noised given frames and per-frame t; < 0 keeps the drawn t). Segment ids above
    `max_segments` are treated as padding.
    Returns t: f32 (B, L).
    """
    check_static_count("max_segments", max_segments)
    if segment_ids.ndim != 2:
        raise ValueError(f"segment_ids must have shape (B, L), got {segment_ids.shape}.")
    if cond_mask is not None and cond_mask.shape != segment_ids.shape:
        raise ValueError(
            f"cond_mask must match segment_ids' shape {segment_ids.shape}, got {cond_mask.shape}."
        )
    batch = segment_ids.shape[0]
    segment_numbers = jnp.arange(1, max_segments + 1)  # (S,)
    in_segment = segment_ids[:, :, None] == segment_numbers  # (B, L, S)

    t_segment = logit_normal(rng, (batch, max_segments), mean, std)  # (B, S)
    if shift_by_tokens:
        # Absent segments (0 tokens) are counted as 1, where the anchors are checked to
        # give a positive shift, so their unused t stays finite.
        tokens_per_segment = jnp.maximum(in_segment.sum(axis=1), 1)  # (B, S)
        segment_shift = resolution_shift(
            tokens_per_segment, base_tokens, base_shift, max_tokens, max_shift
        )  # (B, S)
        t_segment = shift_timesteps(t_segment, segment_shift)  # (B, S)
    else:
        t_segment = shift_timesteps(t_segment, shift)  # (B, S)

    # A one-hot sum rather than a gather: padding and out-of-range ids fall out as 0.
    t = jnp.sum(jnp.where(in_segment, t_segment[:, None, :], 0.0), axis=-1)  # (B, L)
    if cond_mask is not None:
        t = jnp.where(cond_mask, 0.0, t)  # (B, L)
    if cond_t is not None:
        if cond_t.shape != segment_ids.shape:
            raise ValueError(f"cond_t must have shape {segment_ids.shape}, got {cond_t.shape}.")
        own = (cond_t >= 0) & (segment_ids > 0) & (segment_ids <= max_segments)
        t = jnp.where(own, cond_t, t)  # (B, L)
    return t


# ---- What training did, for sampling ----


@dataclasses.dataclass(frozen=True)
class TimeShift:
    """How training shifted t (config.diffusion's shift fields), so sampling can shift its
    grid the same way: by `resolution_shift` of each sample's token count, or by `shift`."""

    shift_by_tokens: bool = False
    shift: float = 1.0
    base_tokens: int = 256
    base_shift: float = 1.0
    max_tokens: int = 4096
    max_shift: float = 3.0

    @classmethod
    def from_config(cls, diffusion) -> "TimeShift":
        """From a config.diffusion ConfigDict (or any mapping with these fields)."""
        return cls(**{f.name: diffusion[f.name] for f in dataclasses.fields(cls)})

    def for_tokens(self, num_tokens) -> float:
        """The shift of a sample of num_tokens tokens (its conditioning tokens included)."""
        if not self.shift_by_tokens:
            return float(self.shift)
        return float(
            resolution_shift(
                max(int(num_tokens), 1),
                self.base_tokens,
                self.base_shift,
                self.max_tokens,
                self.max_shift,
            )
        )


# ---- Sampling grid ----


def sampling_schedule(num_steps, shift=1.0):
    """Decreasing grid of num_steps + 1 times from 1 (noise) to 0 (data): a uniform grid,
    shifted like the training t so sampling spends its steps where training did."""
    check_static_count("num_steps", num_steps)
    return shift_timesteps(jnp.linspace(1.0, 0.0, num_steps + 1), shift)  # (num_steps + 1,)
