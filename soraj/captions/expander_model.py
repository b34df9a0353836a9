"""The learned prompt expander: frozen MiniLM states of a short prompt → the shared caption
TextDecoder → a dense caption, sampled (so unstated slots follow the training prior), checked
against what the prompt states, and replaced by the rule expansion when every sample fails."""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from soraj import exports
from soraj.captions.decoder import TextDecoder
from soraj.captions.decoding import sample_decode
from soraj.captions.expand import Expansion, expand_rule, violations
from soraj.captions.prompt_parse import parse_prompt
from soraj.captions.vocab import CaptionVocab
from soraj.data.shapes import STILL, dense_caption, parse_dense_caption
from soraj.models.conditioning import TextConfig

SHIPPED_EXPANDER = (
    Path(__file__).resolve().parent.parent.parent / "experiments" / "shapes" / "expander"
)
MODE = "dense"  # the decoder's mode token: the expander only writes dense captions
TRIES = 8  # samples decoded at once; the first that passes the check is used


@dataclasses.dataclass(frozen=True)
class ExpanderConfig:
    width: int = 128
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: int = 4
    max_length: int = 32  # decoder positions: BOS, mode, pieces, EOS
    text_max_tokens: int = 32  # MiniLM tokens of the prompt (the memory)

    def decoder(self, vocab_size: int) -> TextDecoder:
        return TextDecoder(
            vocab_size, self.width, self.depth, self.num_heads, self.max_length, self.mlp_ratio
        )


# ---- The expander -----------------------------------------------------------------------------


@dataclasses.dataclass
class LearnedExpander:
    config: ExpanderConfig
    vocab: CaptionVocab
    params: dict
    encoder: object  # MiniLMEncoder

    @classmethod
    def load(cls, directory: str | Path | None = None) -> "LearnedExpander":
        from soraj.models.text import MiniLMEncoder

        export = exports.find_export(directory or SHIPPED_EXPANDER, "expander")
        stored = exports.load_export_config(
            export, "expander", required=("expander_config", "vocab")
        )
        with exports.config_errors(export):
            config = ExpanderConfig(**stored["expander_config"])
        vocab = CaptionVocab.from_dict(stored["vocab"])
        abstract = jax.eval_shape(functools.partial(init_params, config, vocab.size), 0)
        params, _ = exports.load_export(export, abstract)
        return cls(config, vocab, params, MiniLMEncoder(max_tokens=config.text_max_tokens))

    def sample(self, prompts, seed: int = 0, temperature: float = 1.0) -> list[str]:
        """One sampled dense caption per prompt (any text, unchecked)."""
        memory, mask = self.encoder.encode(list(prompts))  # (B, K, E), (B, K)
        prefix = np.tile(self.vocab.prefix(MODE), (len(prompts), 1))
        decoder = self.config.decoder(self.vocab.size)
        ids = sample_decode(
            decoder, self.params, memory, mask, prefix, jax.random.key(seed), temperature
        )
        return self.vocab.decode(np.asarray(ids))

    def expand(self, prompt: str, seed: int = 0, num_frames: int = 9) -> Expansion:
        stated = parse_prompt(prompt)
        rejected = []
        for text in self.sample([prompt] * TRIES, seed):
            try:
                scene = parse_dense_caption(text)
            except ValueError:
                rejected.append("unparsable")
                continue
            if num_frames == 1 and any(o.motion != STILL for o in scene.objects):
                rejected.append("motion in a still")
                continue
            problems = violations(stated, scene)
            if not problems:
                unused = f"could not use: {', '.join(stated.unused)}" if stated.unused else ""
                return Expansion(prompt, dense_caption(scene), "learned", True, unused)
            rejected.append(problems[0])
        fallback = expand_rule(prompt, seed, num_frames)
        why = f"learned: all {TRIES} samples failed the check ({rejected[0]}); used rule"
        message = "; ".join(m for m in (why, fallback.message) if m)
        return dataclasses.replace(fallback, message=message)


def init_params(config: ExpanderConfig, vocab_size: int, seed: int = 0) -> dict:
    tokens = jnp.zeros((1, config.max_length), jnp.int32)
    memory = jnp.zeros((1, config.text_max_tokens, TextConfig().width))  # (1, K, E)
    mask = jnp.ones((1, config.text_max_tokens), bool)
    decoder = config.decoder(vocab_size)
    return decoder.init(jax.random.key(seed), tokens, memory, mask)["params"]


@functools.cache
def _cached(directory: str) -> LearnedExpander:
    return LearnedExpander.load(directory)


def expand_learned(prompt: str, seed=0, num_frames=9, checkpoint=None) -> Expansion:
    return _cached(str(checkpoint or SHIPPED_EXPANDER)).expand(prompt, seed, num_frames)
