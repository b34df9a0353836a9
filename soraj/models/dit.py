"""The diffusion transformer over packed rows of spacetime patches, and its size presets."""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from soraj.models.layers import (
    ATTENTION_BACKENDS,
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

# Logical axis names on kernels (mapped to mesh axes only in soraj/sharding.py):
#   "embed" model width D, "mlp" hidden width, "heads" N, "kv" head dim K, "patch" P,
#   "text_embed" E, "modulation" the 6D / 2D adaLN outputs, "freq" the timestep sinusoid.
#
# Params: `model.init` returns kernels boxed in `nn.Partitioned`. The trainer keeps
# `nn.get_partition_spec(variables)` for sharding and trains on `nn.unbox(variables)`;
# `apply` works with either, and checkpoints should hold the unboxed arrays.

DTYPES = ("float32", "bfloat16", "float16")


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
    dtype: str = "float32"  # compute dtype; params are always f32

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend={self.attention_backend!r}; "
                f"allowed: {', '.join(ATTENTION_BACKENDS)}"
            )
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


DIT_PRESETS = {
    "tiny": DiTConfig(width=192, depth=6, num_heads=3),  # CPU: 48 tokens per 9×32×32 clip
    "S/2": DiTConfig(width=384, depth=12, num_heads=6),
    "B/2": DiTConfig(width=768, depth=12, num_heads=12),
    "L/2": DiTConfig(width=1024, depth=24, num_heads=16),
    "XL/2": DiTConfig(width=1152, depth=28, num_heads=16),
}


def _dense(features: int, axes: tuple[str, str], dtype, zero: bool = False, name=None):
    init = nn.initializers.zeros_init() if zero else nn.initializers.xavier_uniform()
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=dense_init(axes, init),
        name=name,
    )


#################### Attention sublayer ####################


class MultiHeadAttention(nn.Module):
    """Segment-masked attention from x to context with qk-RMSNorm; RoPE when given."""

    num_heads: int
    head_dim: int
    backend: str
    dtype: jnp.dtype
    zero_out: bool = False  # cross-attention starts as a no-op, like the adaLN-Zero gates

    @nn.compact
    def __call__(self, x, context, q_segment_ids, kv_segment_ids, kv_mask=None, rope=None):
        def heads(name):
            return nn.DenseGeneral(
                (self.num_heads, self.head_dim),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=dense_init(("embed", "heads", "kv")),
                name=name,
            )

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
        )  # (B, L, N, K)
        out_init = (
            nn.initializers.zeros_init() if self.zero_out else nn.initializers.xavier_uniform()
        )
        return nn.DenseGeneral(
            x.shape[-1],
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=dense_init(("heads", "kv", "embed"), out_init),
            name="out",
        )(out)  # (B, L, D)


#################### DiT block ####################


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention and MLP, with an ungated cross-attention to text between."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, c, rope, segment_ids, text_states, text_segment_ids, text_mask):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        D = cfg.width
        # Zero-initialised modulation: every gate starts at 0, so each block starts as identity.
        modulation = _dense(6 * D, ("embed", "modulation"), dtype, zero=True, name="adaLN")
        shift_sa, scale_sa, gate_sa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
            modulation(nn.silu(c)), 6, axis=-1
        )  # each (B, L, D)

        attn = dict(num_heads=cfg.num_heads, head_dim=cfg.head_dim, backend=cfg.attention_backend)
        h = modulate(layer_norm(x), shift_sa, scale_sa)  # (B, L, D)
        h = MultiHeadAttention(**attn, dtype=dtype, name="self_attn")(
            h, h, segment_ids, segment_ids, rope=rope
        )
        x = x + gate_sa * h  # (B, L, D)

        # Token of segment s sees only text[b, s-1]: the flattened text carries segment ids.
        h = MultiHeadAttention(**attn, dtype=dtype, zero_out=True, name="cross_attn")(
            layer_norm(x), text_states, segment_ids, text_segment_ids, kv_mask=text_mask
        )
        x = x + h  # (B, L, D)

        h = modulate(layer_norm(x), shift_mlp, scale_mlp)
        h = Mlp(int(D * cfg.mlp_ratio), D, dtype=dtype, name="mlp")(h)
        return x + gate_mlp * h  # (B, L, D)


#################### Final layer ####################


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then D -> P; both zero-initialised so the DiT starts at v = 0."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, c):
        dtype = jnp.dtype(self.config.dtype)
        modulation = _dense(
            2 * self.config.width, ("embed", "modulation"), dtype, zero=True, name="adaLN"
        )
        shift, scale = jnp.split(modulation(nn.silu(c)), 2, axis=-1)  # (B, L, D) each
        x = modulate(layer_norm(x), shift, scale)
        proj = _dense(self.config.patch_features, ("embed", "patch"), dtype, zero=True, name="proj")
        return proj(x)  # (B, L, P)


#################### DiT ####################


class DiT(nn.Module):
    """Predicts the velocity v for every token of packed rows (DESIGN.md §4).

    Attention never crosses segments and padding tokens (segment 0) never reach real ones, so
    a sample's output does not depend on what else is packed in its row.
    """

    config: DiTConfig

    def _check_shapes(self, x_t, t, coords, segment_ids, text, text_mask):
        cfg = self.config
        B, L = x_t.shape[:2]
        expected = {
            "x_t": (x_t.shape, (B, L, cfg.patch_features)),
            "t": (t.shape, (B, L)),
            "coords": (coords.shape, (B, L, 3)),
            "segment_ids": (segment_ids.shape, (B, L)),
            "text": (text.shape, (B, *text.shape[1:3], cfg.text_width)),
            "text_mask": (text_mask.shape, text.shape[:3]),
        }
        if x_t.ndim != 3 or text.ndim != 4:
            raise ValueError(
                f"x_t must be (B, L, P) and text (B, S, M, E); got {x_t.shape} and {text.shape}"
            )
        for name, (got, want) in expected.items():
            if tuple(got) != tuple(want):
                raise ValueError(
                    f"{name} has shape {tuple(got)}, expected {tuple(want)} "
                    f"(P={cfg.patch_features}, E={cfg.text_width})"
                )

    @nn.compact
    def __call__(self, x_t, t, coords, segment_ids, text, text_mask):
        # x_t (B, L, P), t (B, L), coords i32 (B, L, 3), segment_ids i32 (B, L),
        # text (B, S, M, E), text_mask bool (B, S, M) -> v f32 (B, L, P)
        self._check_shapes(x_t, t, coords, segment_ids, text, text_mask)
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        B, S, M = text_mask.shape
        D = cfg.width

        # ---- Sanitise padding ----
        # Masking already keeps padding out of real tokens; zeroing it as well means garbage
        # there (even inf/NaN) cannot leak through 0 * inf in an attention product.
        is_real = segment_ids > 0  # (B, L)
        x_t = jnp.where(is_real[..., None], x_t, 0)
        t = jnp.where(is_real, t, 0)
        coords = jnp.where(is_real[..., None], coords, 0)
        text_mask = text_mask.astype(bool)
        text = jnp.where(text_mask[..., None], text, 0)

        # ---- Embeddings ----
        # The residual stream stays f32; each Dense casts to the compute dtype on entry.
        x = _dense(D, ("patch", "embed"), dtype, name="patch_embed")(x_t)
        x = x.astype(jnp.float32)  # (B, L, D)
        c = TimestepEmbedder(D, dtype=dtype, name="t_embedder")(t)  # (B, L, D)

        text_states = _dense(D, ("text_embed", "embed"), dtype, name="text_proj")(
            layer_norm(text)
        )  # (B, S, M, D)

        # ---- Pooled text into adaLN ----
        # Per segment, so each token is conditioned on its own caption only.
        weights = text_mask[..., None].astype(jnp.float32)  # (B, S, M, 1)
        count = jnp.maximum(weights.sum(axis=2), 1.0)  # (B, S, 1)
        pooled = (text_states.astype(jnp.float32) * weights).sum(axis=2) / count  # (B, S, D)
        pooled = _dense(D, ("embed", "mlp"), dtype, name="text_pool_proj")(pooled)  # (B, S, D)
        segment_index = jnp.clip(segment_ids - 1, 0, S - 1)  # (B, L)
        token_text = jnp.take_along_axis(pooled, segment_index[..., None], axis=1)  # (B, L, D)
        c = c.astype(jnp.float32) + jnp.where(is_real[..., None], token_text, 0)  # (B, L, D)

        # ---- Text as keys for cross-attention ----
        text_states = text_states.reshape(B, S * M, D)  # (B, S·M, D)
        text_segment_ids = jnp.broadcast_to(
            jnp.repeat(jnp.arange(1, S + 1, dtype=jnp.int32), M), (B, S * M)
        )  # (B, S·M)
        text_mask = text_mask.reshape(B, S * M)  # (B, S·M)

        # ---- Blocks ----
        rope = rope_3d(coords, cfg.head_dim)  # cos, sin (B, L, K/2)
        for i in range(cfg.depth):
            x = DiTBlock(cfg, name=f"block_{i}")(
                x, c, rope, segment_ids, text_states, text_segment_ids, text_mask
            )  # (B, L, D)

        return FinalLayer(cfg, name="final")(x, c).astype(jnp.float32)  # (B, L, P)
