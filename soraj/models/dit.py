"""The diffusion transformer over packed rows of spacetime patches, and its size presets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Logical axis names on kernels (mapped to mesh axes only in soraj/sharding.py):
#   "embed" model width D, "mlp" hidden width, "heads" N, "kv" head dim K, "patch" P,
#   "text_embed" E, "modulation" the 6D / 2D adaLN outputs, "modulation_part" the 6 (or 2)
#   rows of an adaLN-single table, "freq" the timestep sinusoid,
#   "classes" the rows of the class-label table.
#
# Params: `model.init` returns kernels boxed in `nn.Partitioned`. The trainer keeps
# `nn.get_partition_spec(variables)` for sharding and trains on `nn.unbox(variables)`;
# `apply` works with either, and checkpoints should hold the unboxed arrays.
from soraj.models.dit_config import (  # noqa: F401  (the config and presets live there)
    CONDITIONINGS,
    DIT_PRESETS,
    DIT_SIZES,
    DTYPES,
    MODULATIONS,
    REMAT_CHOICES,
    REMAT_POLICIES,
    DiTConfig,
    class_conditional,
)
from soraj.models.layers import (
    DenseOverAxes,
    Mlp,
    RMSNorm,
    TimestepEmbedder,
    apply_rope,
    attention,
    dense_init,
    layer_norm,
    modulate,
    rope_3d,
)
from soraj.models.modulation import block_modulation, check_timestep_slots, timestep_slots


def _dense(features: int, axes: tuple[str, str], dtype, zero: bool = False, name=None):
    init = nn.initializers.zeros_init() if zero else nn.initializers.xavier_uniform()
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=dense_init(axes, init),
        name=name,
    )


def tokens_constraint(x):
    """(B, L, D) activations laid out by the logical rules in force (none: unchanged)."""
    return nn.with_logical_constraint(x, ("batch", "tokens", "embed"))


#################### Attention sublayer ####################


class MultiHeadAttention(nn.Module):
    """Segment-masked attention from x to context with qk-RMSNorm; RoPE when given."""

    num_heads: int
    head_dim: int
    backend: str
    dtype: jnp.dtype
    zero_out: bool = False  # cross-attention starts as a no-op, like the adaLN-Zero gates
    context_parallel: str | None = None  # self-attention only: the strategy over "tokens"

    @nn.compact
    def __call__(
        self, x, context, q_segment_ids, kv_segment_ids, kv_mask=None, rope=None, window=None
    ):
        def heads(name):
            features = (self.num_heads, self.head_dim)
            axes = ("embed", "heads", "kv")
            return DenseOverAxes(features, 1, axes, dtype=self.dtype, name=name)

        q = heads("query")(x)  # (B, L, N, K)
        k = heads("key")(context)  # (B, M, N, K)
        v = heads("value")(context)  # (B, M, N, K)
        # qk-norm bounds the logits, which keeps bf16 training of large widths stable.
        q, k = RMSNorm(name="q_norm")(q), RMSNorm(name="k_norm")(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention(
            q,
            k,
            v,
            q_segment_ids=q_segment_ids,
            kv_segment_ids=kv_segment_ids,
            kv_mask=kv_mask,
            backend=self.backend,
            max_segment_length=window,
            context_parallel=self.context_parallel,
        )  # (B, L, N, K)
        out_init = (
            nn.initializers.zeros_init() if self.zero_out else nn.initializers.xavier_uniform()
        )
        axes = ("heads", "kv", "embed")
        out = DenseOverAxes((x.shape[-1],), 2, axes, out_init, self.dtype, name="out")(out)
        return out  # (B, L, D)


#################### DiT block ####################


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention and MLP, with an ungated cross-attention to text between.

    In class mode there is no text, so no cross-attention: the label reaches the block via c.
    """

    config: DiTConfig

    @nn.compact
    def __call__(
        self, x, c, rope, segment_ids, text_states, text_segment_ids, text_mask, window=None
    ):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        D = cfg.width
        shift_sa, scale_sa, gate_sa, shift_mlp, scale_mlp, gate_mlp = block_modulation(
            self, cfg.modulation, c, 6, dtype
        )  # each (B, L, D)

        attn = dict(num_heads=cfg.num_heads, head_dim=cfg.head_dim, backend=cfg.attention_backend)
        h = modulate(layer_norm(x), shift_sa, scale_sa)  # (B, L, D)
        h = MultiHeadAttention(
            **attn, context_parallel=cfg.context_parallel, dtype=dtype, name="self_attn"
        )(h, h, segment_ids, segment_ids, rope=rope, window=window)
        x = x + gate_sa * h  # (B, L, D)

        if cfg.conditioning == "text":
            # Token of segment s sees only text[b, s-1]: the flattened text carries segment ids.
            # Under context parallelism each device attends its own tokens to the whole text.
            h = MultiHeadAttention(
                **attn, dtype=dtype, zero_out=True, context_parallel="queries", name="cross_attn"
            )(layer_norm(x), text_states, segment_ids, text_segment_ids, kv_mask=text_mask)
            x = x + h  # (B, L, D)

        h = modulate(layer_norm(x), shift_mlp, scale_mlp)
        h = Mlp(int(D * cfg.mlp_ratio), D, dtype=dtype, name="mlp")(h)
        return x + gate_mlp * h  # (B, L, D)


#################### Final layer ####################


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then D -> P; zero-initialised so the DiT starts at v = 0.

    With adaLN-single the shift and scale are c itself plus a learned table (PixArt-α), so
    the final layer costs no modulation matmul either. The table starts random, as PixArt-α's
    does: its gradient flows only through the zero-initialised projection, so a zero start
    would leave it at float round-off for the first warm-up steps."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, c):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        if cfg.modulation == "single":
            table_init = nn.initializers.normal(cfg.width**-0.5)
            shift, scale = block_modulation(self, "single", jnp.tile(c, 2), 2, dtype, table_init)
        else:
            shift, scale = block_modulation(self, cfg.modulation, c, 2, dtype)  # (B, L, D) each
        x = modulate(layer_norm(x), shift, scale)
        proj = _dense(cfg.patch_features, ("embed", "patch"), dtype, zero=True, name="proj")
        return proj(x)  # (B, L, P)


#################### DiT ####################


class DiT(nn.Module):
    """Predicts the velocity v for every token of packed rows (docs/architecture.md §4).

    Attention never crosses segments and padding tokens (segment 0) never reach real ones, so
    a sample's output does not depend on what else is packed in its row. Text mode takes
    `text, text_mask`; class mode takes `labels` i32 (B, S) in [0, num_classes] instead.

    max_segment_tokens (a static int): a promise that every sample is one contiguous run of
    at most that many tokens, as the packer's rows with that token budget are. Self-attention
    then works in windows of 3× that length instead of the whole row (layers.attention):
    the same output, with attention cost linear rather than quadratic in the row length.
    """

    config: DiTConfig

    def _check_inputs(self, x_t, t, coords, segment_ids, text, text_mask, labels):
        cfg = self.config
        if x_t.ndim != 3:
            raise ValueError(f"x_t must be (B, L, P), got {x_t.shape}")
        B, L = x_t.shape[:2]
        expected = {
            "x_t": (x_t.shape, (B, L, cfg.patch_features)),
            "t": (t.shape, (B, L)),
            "coords": (coords.shape, (B, L, 3)),
            "segment_ids": (segment_ids.shape, (B, L)),
        }
        if cfg.conditioning == "text":
            if text is None or text_mask is None or labels is not None:
                raise ValueError("conditioning='text' takes text and text_mask, not labels")
            if text.ndim != 4:
                raise ValueError(f"text must be (B, S, M, E), got {text.shape}")
            expected["text"] = (text.shape, (B, *text.shape[1:3], cfg.text_width))
            expected["text_mask"] = (text_mask.shape, text.shape[:3])
        else:
            if labels is None or text is not None or text_mask is not None:
                raise ValueError("conditioning='class' takes labels (B, S), not text or text_mask")
            if labels.ndim != 2:
                raise ValueError(f"labels must be (B, S), got {labels.shape}")
            expected["labels"] = (labels.shape, (B, labels.shape[1]))
        for name, (got, want) in expected.items():
            if tuple(got) != tuple(want):
                raise ValueError(
                    f"{name} has shape {tuple(got)}, expected {tuple(want)} "
                    f"(P={cfg.patch_features}, E={cfg.text_width})"
                )
        if labels is not None:
            self._check_labels(labels)
        if cfg.modulation == "per_segment":
            check_timestep_slots(t, segment_ids, cfg.timesteps_per_sample)

    def _check_labels(self, labels):
        num_classes = self.config.num_classes
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        # Only concrete labels can be checked; under jit an out-of-range index would clamp.
        if isinstance(labels, jax.core.Tracer):
            return
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() > num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}] ({num_classes} is the null label), "
                f"got min {values.min()} and max {values.max()}"
            )

    @nn.compact
    def __call__(
        self,
        x_t,
        t,
        coords,
        segment_ids,
        text=None,
        text_mask=None,
        labels=None,
        max_segment_tokens=None,
    ):
        # x_t (B, L, P), t (B, L), coords i32 (B, L, 3), segment_ids i32 (B, L),
        # text (B, S, M, E), text_mask bool (B, S, M) | labels i32 (B, S) -> v f32 (B, L, P)
        self._check_inputs(x_t, t, coords, segment_ids, text, text_mask, labels)
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        B, L = segment_ids.shape
        S = labels.shape[1] if text is None else text.shape[1]
        D = cfg.width

        # ---- Sanitise padding ----
        # Masking already keeps padding out of real tokens; zeroing it as well means garbage
        # there (even inf/NaN) cannot leak through 0 * inf in an attention product.
        is_real = segment_ids > 0  # (B, L)
        x_t = jnp.where(is_real[..., None], x_t, 0)
        t = jnp.where(is_real, t, 0)
        coords = jnp.where(is_real[..., None], coords, 0)

        # ---- Embeddings ----
        # The residual stream stays f32; each Dense casts to the compute dtype on entry.
        x = _dense(D, ("patch", "embed"), dtype, name="patch_embed")(x_t)
        x = x.astype(jnp.float32)  # (B, L, D)
        t_embedder = TimestepEmbedder(D, dtype=dtype, name="t_embedder")

        text_states = text_segment_ids = None
        if cfg.conditioning == "text":
            text_mask = text_mask.astype(bool)
            text = jnp.where(text_mask[..., None], text, 0)
            text_states = _dense(D, ("text_embed", "embed"), dtype, name="text_proj")(
                layer_norm(text)
            )  # (B, S, M, D)

            # ---- Pooled text into adaLN ----
            weights = text_mask[..., None].astype(jnp.float32)  # (B, S, M, 1)
            count = jnp.maximum(weights.sum(axis=2), 1.0)  # (B, S, 1)
            pooled = (text_states.astype(jnp.float32) * weights).sum(axis=2) / count  # (B, S, D)
            segment_cond = _dense(D, ("embed", "mlp"), dtype, name="text_pool_proj")(pooled)
        else:
            # ---- Class label into adaLN ----
            table = nn.Embed(
                cfg.num_classes + 1,  # the last row is the null label for guidance
                D,
                param_dtype=jnp.float32,
                embedding_init=dense_init(("classes", "embed"), nn.initializers.normal(0.02)),
                name="label_embedder",
            )
            segment_cond = table(labels)  # (B, S, D)
        segment_cond = segment_cond.astype(jnp.float32)

        # ---- adaLN conditioning c = timestep embedding + the sample's caption or label ----
        # Per segment, so each token is conditioned on its own caption or label only.
        if cfg.modulation == "per_segment":
            # One c per (sample, distinct t) slot; blocks gather it per token (modulation.py).
            K = cfg.timesteps_per_sample
            slot_t, slot_index = timestep_slots(t, segment_ids, S, K)  # (B, S·K), (B, L)
            c = t_embedder(slot_t).astype(jnp.float32)  # (B, S·K, D)
            c = c + jnp.repeat(segment_cond, K, axis=1)  # (B, S·K, D)
            block_c = final_c = (c, slot_index)
        else:
            segment_index = jnp.clip(segment_ids - 1, 0, S - 1)  # (B, L)
            token_cond = jnp.take_along_axis(segment_cond, segment_index[..., None], axis=1)
            c = t_embedder(t).astype(jnp.float32)  # (B, L, D)
            c = c + jnp.where(is_real[..., None], token_cond, 0)  # (B, L, D)
            c = tokens_constraint(c)
            block_c = final_c = c
            if cfg.modulation == "single":
                # ---- adaLN-single: one modulation per token, shared by every block ----
                shared = _dense(6 * D, ("embed", "modulation"), dtype, zero=True, name="adaLN")
                block_c = nn.with_logical_constraint(
                    shared(nn.silu(c)).astype(jnp.float32), ("batch", "tokens", "modulation")
                )  # (B, L, 6D)

        # ---- Text as keys for cross-attention ----
        if cfg.conditioning == "text":
            M = text_mask.shape[2]
            text_states = text_states.reshape(B, S * M, D)  # (B, S·M, D)
            text_segment_ids = jnp.broadcast_to(
                jnp.repeat(jnp.arange(1, S + 1, dtype=jnp.int32), M), (B, S * M)
            )  # (B, S·M)
            text_mask = text_mask.reshape(B, S * M)  # (B, S·M)

        # ---- Blocks ----
        rope = rope_3d(coords, cfg.head_dim)  # cos, sin (B, L, K/2)
        # Under a mesh, tokens are split over "context" (sequence parallelism) at every block
        # boundary; attention gathers what it needs, as GSPMD decides.
        x = tokens_constraint(x)
        block_args = (block_c, rope, segment_ids, text_states, text_segment_ids, text_mask)
        block = DiTBlock
        if cfg.remat != "none":
            # window (argument 8, counting self) is a Python int that shapes the computation.
            policy = REMAT_POLICIES[cfg.remat]
            # prevent_cse guards unrolled blocks; scan already keeps the recomputation apart.
            block = nn.remat(
                DiTBlock, policy=policy, static_argnums=(8,), prevent_cse=not cfg.scan_blocks
            )
        if cfg.scan_blocks:

            def body(module, x, *args):
                return tokens_constraint(module(x, *args, max_segment_tokens)), None

            scan = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast,) * len(block_args),
                length=cfg.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scan(block(cfg, name="blocks"), x, *block_args)  # (B, L, D)
        else:
            for i in range(cfg.depth):
                x = block(cfg, name=f"block_{i}")(x, *block_args, max_segment_tokens)
                x = tokens_constraint(x)  # (B, L, D)

        return FinalLayer(cfg, name="final")(x, final_c).astype(jnp.float32)  # (B, L, P)
