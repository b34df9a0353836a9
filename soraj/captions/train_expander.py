"""Trains the learned prompt expander on (short prompt → dense caption) pairs of Shapes scenes:
MiniLM states of every prompt are computed once, then the caption decoder learns on them."""

import dataclasses
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from soraj import checkpoint, exports, step_loop
from soraj.captions.expander_model import MODE, ExpanderConfig, init_params
from soraj.captions.short_prompts import shorten
from soraj.captions.vocab import PAD_ID, CaptionVocab
from soraj.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZES,
    dense_caption,
    sample_scene,
)
from soraj.metric_writer import MetricWriter
from soraj.models.text import MiniLMEncoder

# ---- Data ---------------------------------------------------------------------------------------


def make_pairs(num_pairs: int, seed: int, num_frames: int, split: str = "train"):
    """(short prompts, dense captions): both rendered from one drawn scene per pair, so the
    dense caption fills what the prompt leaves out from the training prior."""
    rng = np.random.default_rng((seed, 11))
    prompts, targets = [], []
    for _ in range(num_pairs):
        scene = sample_scene(rng, num_frames, split)
        prompts.append(shorten(scene, rng)[0])
        targets.append(dense_caption(scene))
    return prompts, targets


def vocabulary_captions() -> list[str]:
    """Sentences that hold every word of the dense grammar, so the shortlist is complete."""
    words = [*SIZES, *COLOURS, *SHAPES, *MOTIONS]
    return [f"A {w}." for w in words] + [f"The background is {b}." for b in BACKGROUNDS]


def encode_prompts(encoder: MiniLMEncoder, prompts: list[str], batch: int):
    """MiniLM states (N, K, E) and masks (N, K) of every prompt, with a progress bar."""
    states, masks = [], []
    for start in tqdm.trange(0, len(prompts), batch, desc="encode prompts", dynamic_ncols=True):
        s, m = encoder.encode(prompts[start : start + batch])
        states.append(s.astype(np.float16))  # halves the host memory; the decoder reads f32
        masks.append(m)
        encoder.clear_cache()
    return np.concatenate(states), np.concatenate(masks)


# ---- Training step ------------------------------------------------------------------------------


def loss_fn(params, decoder, memory, memory_mask, tokens):
    """Cross-entropy of every token after the mode token; padding does not count."""
    logits = decoder.apply({"params": params}, tokens[:, :-1], memory, memory_mask)  # (B, M-1, V)
    targets = tokens[:, 1:]  # (B, M-1)
    weights = (targets != PAD_ID).at[:, 0].set(False)  # the mode token is given, not predicted
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    accuracy = (jnp.argmax(logits, -1) == targets) * weights
    total = jnp.maximum(weights.sum(), 1)
    return (losses * weights).sum() / total, accuracy.sum() / total


@functools.partial(jax.jit, static_argnames=("decoder", "optimizer"), donate_argnums=(0, 1))
def train_step(params, opt_state, batch, *, decoder, optimizer):
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, decoder, batch["memory"], batch["memory_mask"], batch["tokens"]
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "token_accuracy": accuracy}


# ---- Set-up and loop ----------------------------------------------------------------------------


def check_config(config) -> ExpanderConfig:
    """Every setting the trainer reads, checked before any work (the pairs, the MiniLM states);
    a bad one is a ValueError naming the field and what it allows. Returns the model config."""
    # No checkpoints, so none of the step loop's saves; its logging schedule is shared.
    step_loop.check_every("log_every", config.log_every)
    for name, least, why in (
        ("total_steps", 1, "the steps the run trains"),
        ("batch_size", 1, "pairs a step"),
        ("num_pairs", 1, "training pairs"),
        ("num_frames", 1, "frames of a scene"),
        ("encode_batch", 1, "prompts per MiniLM call"),
        ("warmup_steps", 0, "0: none"),
        ("seed", 0, "a random seed"),
    ):
        step_loop.check_every(name, config[name], least=least, why=why)
    for name, positive in (("learning_rate", True), ("weight_decay", False)):
        value = config[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (positive and value == 0)
        ):
            allowed = "a finite number > 0, e.g. 1e-3" if positive else "a finite number ≥ 0"
            raise ValueError(f"config.{name} must be {allowed}, got {value!r}")
    fields = config.model.to_dict()
    known = [field.name for field in dataclasses.fields(ExpanderConfig)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"config.model has unknown fields {unknown}; allowed: {known}")
    for name, value in fields.items():
        step_loop.check_every(f"model.{name}", value, least=1, why="a model size")
    if fields.get("width", ExpanderConfig.width) % fields.get(
        "num_heads", ExpanderConfig.num_heads
    ):
        raise ValueError(
            f"config.model.width = {fields.get('width')} must be a multiple of "
            f"config.model.num_heads = {fields.get('num_heads')}"
        )
    return ExpanderConfig(**fields)


@dataclasses.dataclass
class ExpanderRun:
    """The expander trainer set up to its first step (the pairs made, their MiniLM states
    computed); train() runs the steps and writes the export."""

    config: object
    workdir: Path
    model_config: ExpanderConfig
    vocab: CaptionVocab
    memory: np.ndarray  # (N, K, E) float16 MiniLM states of the prompts
    memory_mask: np.ndarray  # (N, K)
    tokens: np.ndarray  # (N, M) target ids
    started: float  # time.perf_counter() when set-up began

    def train(self) -> Path:
        config, model_config, vocab = self.config, self.model_config, self.vocab
        decoder = model_config.decoder(vocab.size)
        params = init_params(model_config, vocab.size, config.seed)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            config.learning_rate,
            min(config.warmup_steps, config.total_steps // 2),
            config.total_steps,
        )
        optimizer = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(schedule, weight_decay=config.weight_decay),
        )
        opt_state = optimizer.init(params)
        rng = np.random.default_rng((config.seed, 12))
        writer = MetricWriter(self.workdir, config.total_steps, 0, "train-expander")
        for step in range(1, config.total_steps + 1):
            rows = rng.integers(0, len(self.tokens), config.batch_size)
            batch = {
                "memory": self.memory[rows].astype(np.float32),
                "memory_mask": self.memory_mask[rows],
                "tokens": self.tokens[rows],
            }
            params, opt_state, metrics = train_step(
                params, opt_state, batch, decoder=decoder, optimizer=optimizer
            )
            writer.advance()
            if step_loop.due(step, config.log_every, config.total_steps):
                writer.write(step, jax.device_get(metrics), config.batch_size)
        writer.close()
        export = exports.write_export(
            self.workdir / "export",
            params,
            {
                "kind": "expander",
                "expander_config": dataclasses.asdict(model_config),
                "vocab": vocab.to_dict(),
                "trained_on": {
                    "num_pairs": config.num_pairs,
                    "seed": config.seed,
                    "split": "train",
                },
                "step": config.total_steps,
                "code_version": checkpoint.code_version(),
            },
        )
        minutes = (time.perf_counter() - self.started) / 60
        print(f"trained the expander in {minutes:.1f} minutes")
        print(f"wrote the expander export to {export}")
        return export


def prepare(config, workdir: str | Path) -> ExpanderRun:
    """Everything before the first step: the config checked (bad input is a ValueError before
    any work, which `soraj train-expander` prints as one line), then the pairs, the vocabulary
    and the prompts' MiniLM states."""
    model_config = check_config(config)
    started = time.perf_counter()
    prompts, targets = make_pairs(config.num_pairs, config.seed, config.num_frames)
    vocab = CaptionVocab.from_captions(targets + vocabulary_captions())
    tokens = vocab.encode(targets, [MODE] * len(targets), model_config.max_length)  # (N, M)
    encoder = MiniLMEncoder(max_tokens=model_config.text_max_tokens)
    memory, memory_mask = encode_prompts(encoder, prompts, config.encode_batch)
    return ExpanderRun(
        config, Path(workdir), model_config, vocab, memory, memory_mask, tokens, started
    )


def train_and_evaluate(config, workdir: str | Path) -> Path:
    """Trains, then writes WORKDIR/export (what `--expander-checkpoint` and
    `soraj generate --expand learned` read) and WORKDIR/metrics.jsonl."""
    return prepare(config, workdir).train()
