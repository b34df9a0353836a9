"""The `openai` expansion backend: a chat model on any OpenAI-compatible endpoint rewrites the
prompt, shown real training captions as few-shot answers (as Open-Sora and DALL·E 3 do)."""

import numpy as np

from soraj.captions.expand import Expansion, violations
from soraj.captions.prompt_parse import parse_prompt
from soraj.captions.short_prompts import shorten
from soraj.data.shapes import dense_caption, parse_dense_caption, sample_scene

# Low temperature, as Open-Sora and CogVideoX use: the reply must keep the user's words.
TEMPERATURE = 0.2
MAX_RETRIES = 2
NUM_SHOTS = 4
# The training clips whose dense captions are the few-shot answers: the first clips of the
# Shapes training set (seed 0), whose scene is drawn from the stream (seed, index).
SHOT_SEED = 0
SYSTEM = (
    "You rewrite a user's short prompt for a text-to-video model trained on captions of short "
    "clips of moving shapes. Answer with exactly one caption in the style of the examples and "
    "nothing else: one sentence per object, 'A <size> <colour> <shape> <motion>.', then 'The "
    "background is <background>.'. Sizes: small, large. Colours: red, green, blue, yellow, "
    "purple, orange, cyan, white. Shapes: circle, square, triangle. Motions: moves to the left, "
    "moves to the right, moves up, moves down, stays still. Backgrounds: black, gray. Keep "
    "every object and attribute the user states (a ball is a circle, a box a square); choose "
    "the attributes the user leaves out; one or two objects, with different colours; never add "
    "an object the user did not ask for."
)


def few_shot_pairs(num_shots: int = NUM_SHOTS) -> list[tuple[str, str]]:
    """(short prompt, dense caption) of the first training clips: the caption is the clip's
    own training caption, the prompt a short rendering of the same scene."""
    pairs = []
    for index in range(num_shots):
        scene = sample_scene(np.random.default_rng((SHOT_SEED, index)), 9, "train")
        style = ("short", "alt", "partial_dense", "alt")[index % 4]
        prompt, _ = shorten(scene, np.random.default_rng((SHOT_SEED, index, 7)), style)
        pairs.append((prompt, dense_caption(scene)))
    return pairs


def _failed(prompt: str, why: str) -> Expansion:
    return Expansion(prompt, prompt, "openai", False, f"openai: {why}; kept the original prompt")


def expand_openai(
    prompt: str, endpoint: str | None, model: str | None, seed: int = 0, timeout_s: float = 30.0
) -> Expansion:
    """Never raises for a failed call or a bad reply: the original prompt comes back with
    ok=False and the reason. `seed` is unused: servers honour it unevenly (captions.md §4.1)."""
    from soraj.captions.openai_backend import ReplyError, chat_text, make_client

    if not endpoint or not model:
        return _failed(prompt, "needs an endpoint URL and a model name")
    try:
        client = make_client(endpoint, timeout_s, MAX_RETRIES)
        reply = chat_text(client, model, SYSTEM, few_shot_pairs(), prompt, TEMPERATURE)
    except (ReplyError, ValueError) as error:
        return _failed(prompt, f"no usable reply from {endpoint} ({error})")
    text = " ".join(reply.split()).strip("\"'` ")
    try:
        scene = parse_dense_caption(text)
    except ValueError:
        return _failed(prompt, f"the reply {text[:80]!r} is not in the caption grammar")
    problems = violations(parse_prompt(prompt), scene)
    if problems:
        return _failed(prompt, f"the reply drops what the prompt states ({'; '.join(problems)})")
    return Expansion(prompt, dense_caption(scene), "openai", True, "")
