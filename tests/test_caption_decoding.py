"""Caption decoding: the cached greedy loop and beam search against uncached references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.captions.decoder import TextDecoder
from soraj.captions.decoding import beam_search, greedy_decode
from soraj.captions.vocab import EOS_ID, PAD_ID

VOCAB, LENGTH = 6, 6


@pytest.fixture(scope="module")
def model():
    decoder = TextDecoder(vocab_size=VOCAB, width=16, depth=2, num_heads=2, max_length=LENGTH)
    memory = jax.random.normal(jax.random.key(1), (3, 5, 8))  # (B, K, E)
    memory_mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], bool)
    params = decoder.init(jax.random.key(0), jnp.ones((3, LENGTH), jnp.int32), memory, memory_mask)
    # Sharper logits than at init, so the search has real choices to make.
    params = jax.tree.map(lambda x: 4.0 * x, params["params"])
    return decoder, params, memory, memory_mask


def full_log_probs(decoder, params, tokens, memory, memory_mask):
    """Uncached: the whole sequence through the training-mode decoder."""
    logits = decoder.apply({"params": params}, tokens, memory, memory_mask)
    return np.asarray(jax.nn.log_softmax(logits), np.float64)  # (B, M, V)


def test_greedy_equals_uncached_argmax(model):
    decoder, params, memory, memory_mask = model
    prefix = np.array([[1, 4]] * 3, np.int32)
    out = np.asarray(greedy_decode(decoder, params, memory, memory_mask, jnp.asarray(prefix)))
    for row in range(3):
        expected = [1, 4]
        while len(expected) < LENGTH and expected[-1] != EOS_ID:
            tokens = np.zeros((3, LENGTH), np.int32)
            tokens[row, : len(expected)] = expected
            log_probs = full_log_probs(decoder, params, tokens, memory, memory_mask)
            choices = log_probs[row, len(expected) - 1, PAD_ID + 1 :]
            expected.append(PAD_ID + 1 + int(np.argmax(choices)))
        expected += [PAD_ID] * (LENGTH - len(expected))
        np.testing.assert_array_equal(out[row], expected)


def sequence_score(decoder, params, memory, memory_mask, row, sequence):
    tokens = np.zeros((3, LENGTH), np.int32)
    tokens[row, : len(sequence)] = sequence
    log_probs = full_log_probs(decoder, params, tokens, memory, memory_mask)[row]
    return sum(log_probs[i - 1, sequence[i]] for i in range(2, len(sequence)))


def test_beam_search_finds_the_exhaustive_best(model):
    """With as many beams as hypotheses, beam search is exhaustive: compare with enumerating
    every continuation of the prefix (ended by EOS or by the length limit)."""
    decoder, params, memory, memory_mask = model
    prefix = np.array([[1, 4]] * 3, np.int32)
    beam = VOCAB ** (LENGTH - 2)
    out = np.asarray(beam_search(decoder, params, memory, memory_mask, jnp.asarray(prefix), beam))
    for row in range(3):
        best, best_value = None, -np.inf
        for n in range(1, LENGTH - 1):
            for body in itertools.product(range(VOCAB), repeat=n):
                if EOS_ID in body[:-1] or PAD_ID in body:
                    continue
                if n < LENGTH - 2 and body[-1] != EOS_ID:
                    continue
                sequence = [1, 4, *body]
                score = sequence_score(decoder, params, memory, memory_mask, row, sequence)
                value = score / ((5.0 + len(sequence)) / 6.0) ** 0.6
                if value > best_value:
                    best, best_value = sequence, value
        np.testing.assert_array_equal(out[row], best + [PAD_ID] * (LENGTH - len(best)))


def test_one_beam_is_greedy(model):
    decoder, params, memory, memory_mask = model
    prefix = jnp.array([[1, 3]] * 3, jnp.int32)
    greedy = greedy_decode(decoder, params, memory, memory_mask, prefix)
    beam = beam_search(decoder, params, memory, memory_mask, prefix, 1)
    np.testing.assert_array_equal(greedy, beam)


def test_unfed_ids_reach_the_decoder_as_unk(model):
    """A decoder with unfed ids gives the same logits as the plain decoder fed UNK there."""
    decoder, params, memory, memory_mask = model
    unfed = decoder.clone(unfed_ids=(4, 5))
    tokens = jnp.array([[1, 4, 5, 3, 2, 0], [1, 3, 4, 2, 0, 0], [1, 5, 5, 5, 5, 2]], jnp.int32)
    as_unk = jnp.where((tokens == 4) | (tokens == 5), 3, tokens)  # 3 is UNK_ID
    np.testing.assert_allclose(
        unfed.apply({"params": params}, tokens, memory, memory_mask),
        decoder.apply({"params": params}, as_unk, memory, memory_mask),
        rtol=1e-6,
    )
    # Decoding feeds back what it wrote, so the cached loop masks the same way.
    prefix = jnp.array([[1, 4]] * 3, jnp.int32)
    out = np.asarray(greedy_decode(unfed, params, memory, memory_mask, prefix))
    for row in range(3):
        length = int(np.sum(out[row] != PAD_ID))
        fed = np.where(np.isin(out[row], (4, 5)), 3, out[row])[None].repeat(3, 0)
        logits = decoder.apply({"params": params}, jnp.asarray(fed), memory, memory_mask)
        choices = np.asarray(logits)[row, : length - 1, 1:]
        np.testing.assert_array_equal(out[row, 2:length], 1 + choices.argmax(-1)[1:])
