"""Tests for soraj.models.text: MiniLM against PyTorch transformers, byte tokeniser and encoder."""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.models.text import (
    ByteEncoder,
    ByteTextEncoder,
    MiniLMEncoder,
    byte_tokenize,
)

# minilm_reference.npz holds PyTorch outputs of the same all-MiniLM-L6-v2 weights, made with
# torch 2.13.0+cpu, transformers 5.24.0 (BertModel, eager attention), tokenizers 0.23.3 by:
#   python3 -m venv /tmp/refvenv
#   /tmp/refvenv/bin/pip install torch==2.13.0 transformers safetensors tokenizers numpy
#   HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python tests/fixtures/make_minilm_reference.py
# See that script for the sentences and the sentence-transformers mean pooling + normalise.
REFERENCE_PATH = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
MAX_TOKENS = 32  # the fixture's padding length


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE_PATH) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder(max_tokens=MAX_TOKENS)


# ---- MiniLM against the PyTorch reference ------------------------------------------------


def test_minilm_token_ids_match_reference(minilm, reference):
    ids, mask = minilm.tokenize(list(reference["sentences"]))
    np.testing.assert_array_equal(ids, reference["input_ids"])
    np.testing.assert_array_equal(mask, reference["attention_mask"].astype(bool))
    # The fixture's last sentence is longer than MAX_TOKENS: truncated, still ends in [SEP].
    assert mask[-1].all() and ids[-1, -1] == 102


def test_minilm_hidden_states_match_reference(minilm, reference):
    states, mask = minilm.encode(list(reference["sentences"]))
    chex.assert_shape(states, (len(reference["sentences"]), MAX_TOKENS, 384))
    assert states.dtype == np.float32 and mask.dtype == bool
    # Observed max error is about 3e-6; 1e-4 is the contract for float32 BERT across frameworks.
    np.testing.assert_allclose(states[mask], reference["last_hidden_state"][mask], atol=1e-4)
    np.testing.assert_array_equal(states[~mask], 0.0)


def test_minilm_pooled_embeddings_match_reference(minilm, reference):
    pooled = minilm.encode_pooled(list(reference["sentences"]))
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, reference["pooled"], atol=1e-5)


def test_minilm_null_text_is_the_empty_caption(minilm, reference):
    empty_row = list(reference["sentences"]).index("")
    states, mask = minilm.null_text()
    chex.assert_shape([states, mask], [(MAX_TOKENS, 384), (MAX_TOKENS,)])
    np.testing.assert_array_equal(mask, reference["attention_mask"][empty_row].astype(bool))
    np.testing.assert_allclose(
        states[mask], reference["last_hidden_state"][empty_row][mask], atol=1e-4
    )


def test_minilm_cache_skips_the_model_for_seen_captions(minilm, monkeypatch):
    calls = []
    run_model = minilm._run_model

    def counting_run_model(ids, mask):
        calls.append(ids.shape[0])
        return run_model(ids, mask)

    monkeypatch.setattr(minilm, "_run_model", counting_run_model)
    size_before = minilm.cache_size
    first, first_mask = minilm.encode(["a blue square", "a green dot", "a blue square"])
    assert len(calls) == 1 and minilm.cache_size == size_before + 2
    second, second_mask = minilm.encode(["a green dot", "a blue square"])
    assert len(calls) == 1, "seen captions must come from the cache"
    np.testing.assert_array_equal(second, first[[1, 0]])
    np.testing.assert_array_equal(second_mask, first_mask[[1, 0]])


def test_minilm_states_do_not_depend_on_batch_mates(minilm, reference):
    # The reference ran "a cat" in a batch of 5; here it runs alone (batch bucket of 1).
    minilm.clear_cache()
    states, mask = minilm.encode(["a cat"])
    row = list(reference["sentences"]).index("a cat")
    np.testing.assert_allclose(
        states[0][mask[0]], reference["last_hidden_state"][row][mask[0]], atol=1e-4
    )


@pytest.mark.parametrize(
    "captions, message",
    [([], "empty"), ("a cat", "single string"), (["a cat", 3], "captions\\[1\\]")],
)
def test_minilm_rejects_bad_captions(minilm, captions, message):
    with pytest.raises(ValueError, match=message):
        minilm.encode(captions)


@pytest.mark.parametrize("max_tokens", [1, 0, 513, 2.5])
def test_minilm_rejects_bad_max_tokens(max_tokens):
    with pytest.raises(ValueError, match="max_tokens"):
        MiniLMEncoder(max_tokens=max_tokens)


def test_minilm_rejects_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        MiniLMEncoder(dtype=jnp.int32)


# ---- Byte tokeniser ------------------------------------------------------------------------


def test_byte_tokenize_hand_computed():
    # 'H' = 72, 'i' = 105; 'é' is UTF-8 0xC3 0xA9 = 195, 169; every byte shifts by one.
    ids, mask = byte_tokenize(["Hi", "é", "", "abcd"], max_tokens=3)
    expected = np.array([[73, 106, 0], [196, 170, 0], [0, 0, 0], [98, 99, 100]], np.int32)
    np.testing.assert_array_equal(ids, expected)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(mask, expected > 0)


@pytest.mark.parametrize(
    "captions, max_tokens, message",
    [([], 8, "empty"), ([b"x"], 8, "captions\\[0\\]"), (["x"], 1, "max_tokens")],
)
def test_byte_tokenize_rejects_bad_input(captions, max_tokens, message):
    with pytest.raises(ValueError, match=message):
        byte_tokenize(captions, max_tokens)


def test_byte_text_encoder_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible"):
        ByteTextEncoder(width=30, depth=1, num_heads=4)


# ---- Byte encoder ------------------------------------------------------------------------


class ByteEncoderTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.text_encoder = ByteTextEncoder(width=32, depth=2, num_heads=4, max_tokens=16)
        self.model = self.text_encoder.module()
        assert self.model == ByteEncoder(width=32, depth=2, num_heads=4, max_tokens=16)
        ids, mask = self.text_encoder.encode(["red ball", "a square moves", ""])
        self.ids, self.mask = jnp.asarray(ids), jnp.asarray(mask)
        self.params = self.model.init(jax.random.key(0), self.ids, self.mask)

    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes_and_padding_states_are_zero(self):
        states = self.variant(self.model.apply)(self.params, self.ids, self.mask)
        chex.assert_shape(states, (3, 16, 32))
        chex.assert_tree_all_finite(states)  # the all-padding null caption included
        np.testing.assert_array_equal(np.asarray(states)[~np.asarray(self.mask)], 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_padding_does_not_change_valid_states(self):
        apply = self.variant(self.model.apply)
        padded = apply(self.params, self.ids, self.mask)  # (N, M, E)
        for row in range(2):
            length = int(self.mask[row].sum())
            unpadded = apply(
                self.params, self.ids[row : row + 1, :length], self.mask[row : row + 1, :length]
            )
            chex.assert_trees_all_close(padded[row, :length], unpadded[0], atol=1e-5)

    def test_rejects_sequences_longer_than_max_tokens(self):
        ids = jnp.ones((1, 17), jnp.int32)
        with self.assertRaisesRegex(ValueError, "max_tokens"):
            self.model.apply(self.params, ids, ids > 0)
