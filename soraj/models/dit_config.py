"""The DiT's config and its size presets (the DiT paper's S/B/L/XL with patches 2, 4, 8)."""

import dataclasses

import jax

from soraj.models.context_attention import CONTEXT_STRATEGIES
from soraj.models.layers import ATTENTION_BACKENDS

DTYPES = ("float32", "bfloat16", "float16")
CONDITIONINGS = ("text", "class")
# How the blocks' adaLN shift/scale/gate values are computed from the conditioning c (see DiT):
#   "single": one Dense(6D) per token shared by every block, plus a learned per-block table
#             (PixArt-α's adaLN-single, as Wan and LTX-Video do); per-token timesteps work.
#   "per_segment": each block's own Dense(6D), run once per (sample, distinct t) and gathered
#             by each token: the DiT paper's adaLN and parameter count, the same function as
#             "per_token", at no per-token matmul cost. A sample may carry up to
#             timesteps_per_sample distinct t (its noise level and 0 on conditioning tokens).
#   "per_token": each block's own Dense(6D) on every token's c: 6D² multiply-adds per token per
#             block (about 30 % of a block's matmuls). Kept to reproduce earlier checkpoints
#             and experiments, and as the baseline the others are compared with.
MODULATIONS = ("single", "per_segment", "per_token")
# What a rematerialised block keeps for the backward pass (None: nothing but its inputs).
REMAT_POLICIES = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}
REMAT_CHOICES = ("none", *REMAT_POLICIES)


#################### Config and presets ####################


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    width: int  # D
    depth: int
    num_heads: int  # N
    mlp_ratio: float = 4.0
    patch_size: tuple[int, int, int] = (1, 2, 2)
    latent_channels: int = 8  # C
    text_width: int = 384  # E (MiniLM)
    attention_backend: str = "xla"  # "xla" | "cudnn" | "splash"
    # How self-attention exchanges keys when the tokens are split over a context mesh axis
    # (soraj/models/context_attention.py); nothing changes on one device.
    context_parallel: str = "all_gather"  # "all_gather" | "ulysses" | "ring" | "usp"
    dtype: str = "float32"  # compute dtype; params are always f32
    # "text": captions enter by cross-attention and pooled into adaLN. "class": a label per
    # segment enters adaLN only (no cross-attention); row `num_classes` is the null label.
    conditioning: str = "text"
    num_classes: int = 0
    # Scale-out switches: the blocks as one nn.scan over stacked params (one block to compile;
    # their leading axis is the logical "layers"), and recomputing block activations in the
    # backward pass ("full": keep only block inputs; "dots_saveable": keep matmul outputs).
    scan_blocks: bool = False
    remat: str = "none"
    modulation: str = "single"
    timesteps_per_sample: int = 2  # slots of modulation="per_segment" (K)

    def __post_init__(self):
        if self.modulation not in MODULATIONS:
            raise ValueError(f"modulation={self.modulation!r}; allowed: {', '.join(MODULATIONS)}")
        if self.timesteps_per_sample < 1:
            raise ValueError(f"timesteps_per_sample must be >= 1, got {self.timesteps_per_sample}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(
                f"conditioning={self.conditioning!r}; allowed: {', '.join(CONDITIONINGS)}"
            )
        if self.conditioning == "class" and self.num_classes < 1:
            raise ValueError(f"conditioning='class' needs num_classes >= 1, got {self.num_classes}")
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend={self.attention_backend!r}; "
                f"allowed: {', '.join(ATTENTION_BACKENDS)}"
            )
        if self.context_parallel not in CONTEXT_STRATEGIES:
            raise ValueError(
                f"context_parallel={self.context_parallel!r}; "
                f"allowed: {', '.join(CONTEXT_STRATEGIES)}"
            )
        if self.remat not in REMAT_CHOICES:
            raise ValueError(f"remat={self.remat!r}; allowed: {', '.join(REMAT_CHOICES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints, got {self.patch_size}")

    @property
    def head_dim(self) -> int:  # K
        return self.width // self.num_heads

    @property
    def patch_features(self) -> int:  # P = pt·ph·pw·C
        pt, ph, pw = self.patch_size
        return pt * ph * pw * self.latent_channels


def class_conditional(config: DiTConfig, num_classes: int) -> DiTConfig:
    """The preset as the DiT paper's class-conditional model: a label per sample in adaLN,
    each block's own modulation run once per sample (the paper's parameter count)."""
    return dataclasses.replace(
        config, conditioning="class", num_classes=num_classes, modulation="per_segment"
    )


# The DiT paper's sizes (width, depth, heads); each comes with spatial patches 2, 4 and 8
# and temporal patch 1, named like "XL/2". Conditioning is chosen with dataclasses.replace.
DIT_SIZES = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
DIT_PRESETS = {
    "tiny": DiTConfig(width=192, depth=6, num_heads=3),  # CPU: 48 tokens per 9×32×32 clip
    **{
        f"{size}/{patch}": DiTConfig(
            width=width, depth=depth, num_heads=heads, patch_size=(1, patch, patch)
        )
        for size, (width, depth, heads) in DIT_SIZES.items()
        for patch in (2, 4, 8)
    },
}
