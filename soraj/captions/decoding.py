"""Greedy, sampled and beam-search decoding of a TextDecoder: each one jitted loop over a
fixed maximum length with the decoder's KV cache, stopping early once every row has ended.

Both take the decoder module, its params, the memory (B, K, E) with its mask (B, K) and a
prefix (B, P) of forced tokens (BOS, then the mode token), and return output ids
(B, max_length) that start with the prefix; positions after EOS hold PAD.
"""

import functools

import jax
import jax.numpy as jnp

from soraj.captions.decoder import TextDecoder
from soraj.captions.vocab import EOS_ID, PAD_ID

NEG_INF = -1e9


def _start_cache(decoder: TextDecoder, params, memory, memory_mask):
    """An empty cache for a (B, max_length) decode: its shapes, filled with zeros."""
    batch = memory.shape[0]
    tokens = jnp.zeros((batch, decoder.max_length), jnp.int32)

    def make(tokens):
        return decoder.apply({"params": params}, tokens, memory, memory_mask, mutable=["cache"])[1]

    shapes = jax.eval_shape(make, tokens)["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step(decoder, params, cache, token, memory, memory_mask):
    """One position: token (B, 1) → log-probabilities (B, V), updated cache."""
    logits, updated = decoder.apply(
        {"params": params, "cache": cache}, token, memory, memory_mask, mutable=["cache"]
    )
    # PAD only fills rows that have ended; it is never a choice.
    log_probs = jax.nn.log_softmax(logits[:, 0]).at[:, PAD_ID].set(NEG_INF)
    return log_probs, updated["cache"]


def _token_by_token(decoder, params, memory, memory_mask, prefix, choose):
    """The loop greedy and sampled decoding share: choose(log_probs (B, V), i) → tokens (B,)
    picks each free position; prefix positions are forced; rows stop at EOS."""
    decoder = decoder.clone(decode=True)
    batch, length = memory.shape[0], decoder.max_length
    tokens = jnp.zeros((batch, length), jnp.int32).at[:, : prefix.shape[1]].set(prefix)
    state = (0, tokens, _start_cache(decoder, params, memory, memory_mask), jnp.zeros(batch, bool))

    def running(state):
        i, _, _, done = state
        return (i < length - 1) & ~jnp.all(done)

    def advance(state):
        i, tokens, cache, done = state
        current = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)  # (B, 1)
        log_probs, cache = _step(decoder, params, cache, current, memory, memory_mask)
        forced = i + 1 < prefix.shape[1]
        token = jnp.where(forced, tokens[:, i + 1], jnp.where(done, PAD_ID, choose(log_probs, i)))
        tokens = tokens.at[:, i + 1].set(token)
        return i + 1, tokens, cache, done | (~forced & (token == EOS_ID))

    _, tokens, _, _ = jax.lax.while_loop(running, advance, state)
    return tokens


@functools.partial(jax.jit, static_argnames="decoder")
def greedy_decode(decoder: TextDecoder, params, memory, memory_mask, prefix):
    """The most likely token at every position after the prefix. → (B, max_length) int32"""

    def most_likely(log_probs, i):
        return jnp.argmax(log_probs, axis=-1)

    return _token_by_token(decoder, params, memory, memory_mask, prefix, most_likely)


@functools.partial(jax.jit, static_argnames="decoder")
def sample_decode(decoder: TextDecoder, params, memory, memory_mask, prefix, rng, temperature):
    """Ancestral sampling at `temperature`: where greedy decoding would fill every free choice
    with its mode, a draw keeps the model's spread. → (B, max_length) int32"""

    def draw(log_probs, i):
        return jax.random.categorical(jax.random.fold_in(rng, i), log_probs / temperature)

    return _token_by_token(decoder, params, memory, memory_mask, prefix, draw)


def _gather_beams(tree, flat_index):
    """Rows of every batch-leading leaf, reordered to the surviving beams (B·W rows)."""
    rows = flat_index.shape[0]
    return jax.tree.map(lambda x: x[flat_index] if x.ndim and x.shape[0] == rows else x, tree)


@functools.partial(jax.jit, static_argnames=("decoder", "beam"))
def beam_search(decoder: TextDecoder, params, memory, memory_mask, prefix, beam: int, alpha=0.6):
    """The highest-scoring of `beam` hypotheses per row, scored by log-probability over the
    GNMT length penalty ((5 + n) / 6)^alpha. → (B, max_length) int32"""
    decoder = decoder.clone(decode=True)
    batch, length = memory.shape[0], decoder.max_length
    memory = jnp.repeat(memory, beam, axis=0)  # (B·W, K, E)
    memory_mask = jnp.repeat(memory_mask, beam, axis=0)
    tokens = jnp.zeros((batch, beam, length), jnp.int32)
    tokens = tokens.at[:, :, : prefix.shape[1]].set(prefix[:, None])
    # Only beam 0 is alive at first, so the first expansion does not pick one token W times.
    scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beam - 1)), (batch, 1))  # (B, W)
    cache = _start_cache(decoder, params, memory, memory_mask)
    state = (0, tokens, scores, cache, jnp.zeros((batch, beam), bool))

    def running(state):
        i, _, _, _, done = state
        return (i < length - 1) & ~jnp.all(done)

    def advance(state):
        i, tokens, scores, cache, done = state
        current = tokens[:, :, i].reshape(-1, 1)  # (B·W, 1)
        log_probs, cache = _step(decoder, params, cache, current, memory, memory_mask)
        log_probs = log_probs.reshape(batch, beam, -1)  # (B, W, V)
        vocab = log_probs.shape[-1]
        forced = i + 1 < prefix.shape[1]
        only = jnp.where(forced, tokens[:, :, i + 1], PAD_ID)  # (B, W) the one allowed token
        one_token = jnp.where(jax.nn.one_hot(only, vocab, dtype=bool), 0.0, NEG_INF)
        # A finished beam continues with PAD at no cost; a forced position costs nothing.
        log_probs = jnp.where((done | forced)[..., None], one_token, log_probs)
        candidates = (scores[..., None] + log_probs).reshape(batch, beam * vocab)
        scores, chosen = jax.lax.top_k(candidates, beam)  # (B, W)
        parent, token = chosen // vocab, chosen % vocab
        tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1)
        tokens = tokens.at[:, :, i + 1].set(token)
        was_done = jnp.take_along_axis(done, parent, axis=1)
        flat_parent = (jnp.arange(batch)[:, None] * beam + parent).reshape(-1)
        cache = _gather_beams(cache, flat_parent)
        done = was_done | (~forced & (token == EOS_ID))
        return i + 1, tokens, scores, cache, done

    _, tokens, scores, _, _ = jax.lax.while_loop(running, advance, state)
    lengths = jnp.sum(tokens != PAD_ID, axis=-1)  # (B, W)
    penalty = ((5.0 + lengths) / 6.0) ** alpha
    best = jnp.argmax(scores / penalty, axis=-1)  # (B,)
    return jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
