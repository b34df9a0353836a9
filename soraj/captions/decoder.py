"""The autoregressive text decoder shared by the video captioner and the learned prompt
expander: a pre-LN causal transformer over WordPiece ids, cross-attending to a memory (video
tokens, or a prompt's text states), with a KV cache for decoding.

With `decode=True` each call takes one token per row and appends its keys and values to the
"cache" collection (flax.linen's attention cache), so a decoded token costs one position, not
the whole prefix again.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from soraj.captions.vocab import UNK_ID


class DecoderBlock(nn.Module):
    width: int
    num_heads: int
    mlp_ratio: int
    decode: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, memory, self_mask, cross_mask):
        # ---- causal self-attention (cached when decoding) ----
        y = nn.LayerNorm(name="norm_self")(x)
        x = x + nn.MultiHeadDotProductAttention(
            self.num_heads, dtype=self.dtype, decode=self.decode, name="self_attention"
        )(y, mask=self_mask)  # (B, M, D)
        # ---- cross-attention to the memory ----
        y = nn.LayerNorm(name="norm_cross")(x)
        x = x + nn.MultiHeadDotProductAttention(
            self.num_heads, dtype=self.dtype, name="cross_attention"
        )(y, memory, mask=cross_mask)  # (B, M, D)
        # ---- MLP ----
        y = nn.LayerNorm(name="norm_mlp")(x)
        y = nn.Dense(self.mlp_ratio * self.width, dtype=self.dtype, name="mlp_in")(y)
        y = nn.Dense(self.width, dtype=self.dtype, name="mlp_out")(nn.gelu(y))
        return x + y  # (B, M, D)


class TextDecoder(nn.Module):
    """tokens (B, M) int32, memory (B, K, E), memory_mask bool (B, K) → logits f32 (B, M, V).

    Training (decode=False) sees whole sequences under a causal and padding mask. Decoding
    (decode=True) sees (B, 1) tokens, one position per call, from position 0 on.
    """

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    max_length: int
    mlp_ratio: int = 4
    decode: bool = False
    dtype: Any = jnp.float32
    # Output ids the decoder writes but never reads back: they reach its input as UNK, so the
    # words after them are predicted from the memory, not from them (a colour never seen with
    # a shape cannot veto that shape).
    unfed_ids: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, tokens, memory, memory_mask):
        if self.unfed_ids:
            unfed = jnp.isin(tokens, jnp.array(self.unfed_ids, jnp.int32))
            tokens = jnp.where(unfed, UNK_ID, tokens)
        embed = nn.Embed(self.vocab_size, self.width, name="embed")
        positions = self.param(
            "positions", nn.initializers.normal(0.02), (self.max_length, self.width)
        )
        if self.decode:
            # Where the next token goes: kept in the cache beside the attention keys.
            index = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            position = jax.lax.dynamic_slice_in_dim(positions, index.value, 1)  # (1, D)
            index.value = index.value + 1
            x = embed(tokens) + position[None]  # (B, 1, D)
            self_mask = None  # the cache attends to filled positions only
        else:
            length = tokens.shape[1]
            x = embed(tokens) + positions[None, :length]  # (B, M, D)
            self_mask = nn.combine_masks(
                nn.make_causal_mask(tokens), nn.make_attention_mask(tokens > 0, tokens > 0)
            )  # (B, 1, M, M)
        cross_mask = nn.make_attention_mask(jnp.ones(tokens.shape, bool), memory_mask)
        memory = nn.Dense(self.width, dtype=self.dtype, name="memory_in")(memory)  # (B, K, D)
        for i in range(self.depth):
            x = DecoderBlock(
                self.width, self.num_heads, self.mlp_ratio, self.decode, self.dtype, name=f"b{i}"
            )(x, memory, self_mask, cross_mask)
        x = nn.LayerNorm(name="norm_out")(x)
        return embed.attend(x.astype(jnp.float32))  # (B, M, V), tied to the input embedding
