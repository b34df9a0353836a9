"""The caption decoders' output vocabulary: MiniLM's WordPiece, shortlisted to a caption corpus.

The text decoders write WordPiece, so they read and write real captions with the same
tokenizer as the DiT's text encoder. Their softmax runs over the word pieces a caption corpus
uses (plus the specials), not all 30,522: the output layer is the most expensive part of a
small decoder, and a piece no training caption holds would never be predicted anyway.
"""

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import cached_property

import numpy as np

from soraj.models.text import minilm_model_dir

# WordPiece ids of the specials; BERT's [unused*] rows serve as mode tokens.
PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
MODE_TOKENS = {"dense": "[unused0]", "short": "[unused1]", "original": "[unused2]"}
SPECIALS = (PAD, BOS, EOS, UNK, *MODE_TOKENS.values())
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3  # positions in every shortlist


def tokenizer_fingerprint() -> str:
    """sha256 of MiniLM's tokenizer.json: a checkpoint's ids mean nothing under another one."""
    return hashlib.sha256((minilm_model_dir() / "tokenizer.json").read_bytes()).hexdigest()


def load_wordpiece():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # the shipped file pads to 128
    tokenizer.no_truncation()
    return tokenizer


def sentence_case(text: str) -> str:
    """The uncased vocabulary lower-cases everything; captions start sentences upper-case."""
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


@dataclasses.dataclass(frozen=True)
class CaptionVocab:
    """wordpiece_ids[i] is the WordPiece id of output id i; ids 0..6 are SPECIALS in order."""

    wordpiece_ids: tuple[int, ...]
    fingerprint: str

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> "CaptionVocab":
        tokenizer = load_wordpiece()
        used = set()
        for encoding in tokenizer.encode_batch(list(captions), add_special_tokens=False):
            used.update(encoding.ids)
        specials = [tokenizer.token_to_id(token) for token in SPECIALS]
        pieces = sorted(used - set(specials))
        return cls(tuple(specials + pieces), tokenizer_fingerprint())

    @classmethod
    def from_dict(cls, stored: dict) -> "CaptionVocab":
        """A stored vocabulary, refused when this install's tokenizer differs from its own."""
        if stored.get("fingerprint") != tokenizer_fingerprint():
            raise ValueError(
                "this checkpoint was made with another WordPiece vocabulary (tokenizer "
                f"fingerprint {str(stored.get('fingerprint'))[:12]}…, installed "
                f"{tokenizer_fingerprint()[:12]}…); retrain it with the installed MiniLM tokenizer"
            )
        return cls(tuple(int(i) for i in stored["wordpiece_ids"]), stored["fingerprint"])

    def to_dict(self) -> dict:
        return {"wordpiece_ids": list(self.wordpiece_ids), "fingerprint": self.fingerprint}

    @property
    def size(self) -> int:
        return len(self.wordpiece_ids)

    @cached_property
    def _tokenizer(self):
        return load_wordpiece()

    @cached_property
    def _to_output(self) -> dict[int, int]:
        return {wordpiece: i for i, wordpiece in enumerate(self.wordpiece_ids)}

    def mode_id(self, mode: str) -> int:
        if mode not in MODE_TOKENS:
            raise ValueError(f"unknown caption mode {mode!r}; allowed: {', '.join(MODE_TOKENS)}")
        return SPECIALS.index(MODE_TOKENS[mode])

    def prefix(self, mode: str) -> np.ndarray:
        """What every sequence starts with: BOS, then the mode token. (2,)"""
        return np.array([BOS_ID, self.mode_id(mode)], np.int32)

    def encode(self, captions: Sequence[str], modes: Sequence[str], length: int) -> np.ndarray:
        """[BOS, mode, pieces..., EOS, PAD...] per caption, int32 (N, length); pieces outside
        the shortlist become UNK. A caption that does not fit is an error, never cut."""
        encodings = self._tokenizer.encode_batch(list(captions), add_special_tokens=False)
        ids = np.full((len(encodings), length), PAD_ID, np.int32)
        for row, (encoding, mode) in enumerate(zip(encodings, modes, strict=True)):
            pieces = [self._to_output.get(i, UNK_ID) for i in encoding.ids]
            sequence = [BOS_ID, self.mode_id(mode), *pieces, EOS_ID]
            if len(sequence) > length:
                raise ValueError(
                    f"caption {captions[row]!r} is {len(sequence)} tokens with its markers; the "
                    f"decoder holds {length} (config max_length)"
                )
            ids[row, : len(sequence)] = sequence
        return ids

    def word_positions(self, caption: str, words: Sequence[str], length: int) -> np.ndarray:
        """bool (length,): the positions of `encode`'s row for `caption` that hold a piece of
        one of `words` (whole words, any casing), e.g. every piece of "cyan" in "cy ##an"."""
        wanted = {word.lower() for word in words}
        encoding = self._tokenizer.encode(caption, add_special_tokens=False)
        spans = {}  # word index → (first character, last character) in the caption
        for word, (start, end) in zip(encoding.word_ids, encoding.offsets, strict=True):
            first, last = spans.get(word, (start, end))
            spans[word] = (min(first, start), max(last, end))
        positions = np.zeros(length, bool)
        for i, word in enumerate(encoding.word_ids):
            start, end = spans[word]
            positions[2 + i] = caption[start:end].lower() in wanted  # after BOS and mode
        return positions

    def piece_ids(self, words: Sequence[str]) -> tuple[int, ...]:
        """Output ids of every word piece of `words` (those in the shortlist), sorted."""
        ids = set()
        for encoding in self._tokenizer.encode_batch(list(words), add_special_tokens=False):
            ids.update(self._to_output[i] for i in encoding.ids if i in self._to_output)
        return tuple(sorted(ids))

    def decode(self, ids: np.ndarray) -> list[str]:
        """Output ids (N, M) → captions: the pieces after the prefix, up to the first EOS."""
        captions = []
        for row in np.asarray(ids):
            pieces = []
            for i in row[2:]:
                if i in (EOS_ID, PAD_ID):
                    break
                pieces.append(self.wordpiece_ids[int(i)])
            captions.append(sentence_case(self._tokenizer.decode(pieces)))
        return captions
