"""Hand counts of the DiT's matmul FLOPs on a packed batch: what the code executes, and the
model FLOPs that MFU is reported in. A (m, k) @ (k, n) product costs 2·m·k·n.

- `forward_flops` / `train_step_flops`: every dense layer and attention product soraj's DiT
  runs, padding, attention windows and per-token adaLN included. A check on XLA's cost
  analysis by a second derivation (tests/test_dit_flops.py). Norms, softmax, RoPE,
  activations and the optimizer's elementwise work are left out, which is why XLA's count
  comes out a few percent higher.
- `model_forward_flops` / `model_train_step_flops`: the standard count of useful work, as the
  DiT paper and MFU reports count it. Every matmul of the embeddings, attention
  projections, cross-attention, MLP and final layer over the real (non-padding) tokens;
  attention scores and values over the (query, key) pairs the masks allow (a segment's own
  tokens, its own caption's tokens); the timestep embedding and adaLN once per sample, as
  the DiT paper's per-sample adaLN costs; three times the forward for a train step. It does
  not grow when the code does useless work.
"""

import dataclasses
import math

from soraj.models.dit import DiTConfig

TIMESTEP_FREQUENCIES = 256  # TimestepEmbedder's sinusoid size (soraj/models/layers.py)


@dataclasses.dataclass(frozen=True)
class PackedShape:
    """The shape of one packed batch (docs/architecture.md §4) and the self-attention window it
    runs with."""

    rows: int  # B
    row_length: int  # L
    segments: int  # S
    text_tokens: int  # M
    text_width: int  # E
    window: int | None = None  # max_segment_tokens W (train_step passes config.data.token_budget)
    # Real tokens of each of the S segments of a row (the rest is padding); None: L // S.
    segment_tokens: int | None = None

    @property
    def tokens_per_segment(self) -> int:
        return self.segment_tokens or self.row_length // self.segments


def matmul(m: int, k: int, n: int) -> int:
    """(m, k) @ (k, n): m·n dot products of length k, a multiply and an add each."""
    return 2 * m * k * n


def attended_keys(shape: PackedShape) -> int:
    """Keys each self-attention query is scored against, as layers.attention computes it: the
    whole row, or with a window W where 3W < L, the query's block of W and the blocks on either
    side (3W keys), over the row padded to whole blocks."""
    length, window = shape.row_length, shape.window
    if window is None or 3 * window >= length:
        return length
    return 3 * window


def self_attention_queries(shape: PackedShape) -> int:
    """Query positions per row in self-attention: windowed rows are padded to whole blocks."""
    length, window = shape.row_length, shape.window
    if window is None or 3 * window >= length:
        return length
    return math.ceil(length / window) * window


def forward_flops(config: DiTConfig, shape: PackedShape) -> dict[str, int]:
    """Matmul FLOPs of one DiT forward pass, by layer kind, summed over the depth."""
    if config.conditioning != "text":
        raise ValueError(f"the hand count covers conditioning='text', got {config.conditioning!r}")
    B, L, S, M, E = (
        shape.rows,
        shape.row_length,
        shape.segments,
        shape.text_tokens,
        shape.text_width,
    )
    D, P, F, depth = config.width, config.patch_features, TIMESTEP_FREQUENCIES, config.depth
    hidden = int(D * config.mlp_ratio)
    tokens, text_tokens = B * L, B * S * M
    queries, keys = self_attention_queries(shape), attended_keys(shape)
    # Rows each block's own adaLN Dense runs over (adaLN-single runs one shared Dense instead).
    modulated = {"per_token": tokens, "per_segment": B * S, "single": 0}[config.modulation]
    per_block = {
        "adaln": matmul(modulated, D, 6 * D),  # shift/scale/gate ×2 (adaLN-single: below)
        "self_attention_projections": 4 * matmul(tokens, D, D),  # q, k, v, out
        # Scores q·k and the weighted sum of values: each (queries × keys × D) over the heads.
        "self_attention_scores_values": 2 * B * matmul(queries, D, keys),
        "cross_attention_projections": 2 * matmul(tokens, D, D)  # q, out
        + 2 * matmul(text_tokens, D, D),  # k, v over all S·M text tokens of a row
        "cross_attention_scores_values": 2 * B * matmul(L, D, S * M),
        "mlp": matmul(tokens, D, hidden) + matmul(tokens, hidden, D),
    }
    flops = {name: depth * count for name, count in per_block.items()}
    flops["patch_embed"] = matmul(tokens, P, D)
    embedded = B * S if config.modulation == "per_segment" else tokens  # timesteps embedded
    flops["timestep_embed"] = matmul(embedded, F, D) + matmul(embedded, D, D)
    flops["text_embed"] = matmul(text_tokens, E, D) + matmul(B * S, D, D)  # proj, pooled proj
    flops["final_layer"] = matmul(modulated, D, 2 * D) + matmul(tokens, D, P)
    if config.modulation == "single":
        flops["adaln"] += matmul(tokens, D, 6 * D)  # once per token, shared by every block
    return flops


def model_forward_flops(config: DiTConfig, shape: PackedShape) -> dict[str, int]:
    """The standard count of one forward pass's useful matmul FLOPs, by layer kind."""
    if config.conditioning != "text":
        raise ValueError(f"the count covers conditioning='text', got {config.conditioning!r}")
    B, S, M, E = shape.rows, shape.segments, shape.text_tokens, shape.text_width
    n = shape.tokens_per_segment
    D, P, F, depth = config.width, config.patch_features, TIMESTEP_FREQUENCIES, config.depth
    hidden = int(D * config.mlp_ratio)
    samples = B * S
    tokens, text_tokens = samples * n, samples * M  # real ones only
    per_block = {
        "adaln": matmul(samples, D, 6 * D),  # per sample
        "self_attention_projections": 4 * matmul(tokens, D, D),
        # q·k and the weighted sum of v over each segment's own n × n pairs.
        "self_attention_scores_values": 2 * samples * matmul(n, D, n),
        "cross_attention_projections": 2 * matmul(tokens, D, D) + 2 * matmul(text_tokens, D, D),
        "cross_attention_scores_values": 2 * samples * matmul(n, D, M),  # its own caption
        "mlp": matmul(tokens, D, hidden) + matmul(tokens, hidden, D),
    }
    flops = {name: depth * count for name, count in per_block.items()}
    flops["patch_embed"] = matmul(tokens, P, D)
    flops["timestep_embed"] = matmul(samples, F, D) + matmul(samples, D, D)
    flops["text_embed"] = matmul(text_tokens, E, D) + matmul(samples, D, D)
    flops["final_layer"] = matmul(samples, D, 2 * D) + matmul(tokens, D, P)
    return flops


def model_train_step_flops(config: DiTConfig, shape: PackedShape) -> int:
    """The standard count of a train step: three times the forward pass's model FLOPs."""
    return 3 * sum(model_forward_flops(config, shape).values())


def input_side_flops(config: DiTConfig, shape: PackedShape) -> int:
    """Forward FLOPs of the layers whose input needs no gradient (x_t, the timestep sinusoid,
    the text states): their backward pass computes the weight gradient only."""
    B, L, S, M = shape.rows, shape.row_length, shape.segments, shape.text_tokens
    D = config.width
    return (
        matmul(B * L, config.patch_features, D)
        + matmul(B * L, TIMESTEP_FREQUENCIES, D)
        + matmul(B * S * M, shape.text_width, D)
    )


def train_step_flops(config: DiTConfig, shape: PackedShape) -> int:
    """Matmul FLOPs of one train step: the forward, then for every product the gradient with
    respect to its weight (as many FLOPs as the forward) and to its input (as many again),
    except where the input needs none."""
    return 3 * sum(forward_flops(config, shape).values()) - input_side_flops(config, shape)
