"""A tolerant parser of short Shapes prompts: which attributes a user stated, bound to objects."""

import dataclasses
import re

from soraj.data.shapes import COLOURS
from soraj.data.shapes_alt_text import BACKGROUND_WORDS, MOTION_WORDS, SHAPE_WORDS, SIZE_WORDS

# ---- Vocabulary: phrases → (slot, value) ------------------------------------------------------
# The dense grammar's own words, the alt-text synonyms the training captions use, and a few
# plurals and spellings users type. Multi-word phrases win over their parts (longest match).


def _phrase_table() -> dict[tuple[str, ...], tuple[str, str]]:
    table: dict[tuple[str, ...], tuple[str, str]] = {}

    def add(text: str, slot: str, value: str):
        table[tuple(text.split())] = (slot, value)

    for colour in COLOURS:
        add(colour, "colour", colour)
    add("violet", "colour", "purple")
    for shape, words in SHAPE_WORDS.items():
        for word in (shape, *words):
            add(word, "shape", shape)
            add(word + ("es" if word.endswith("x") else "s"), "shape", shape)
    for size, words in SIZE_WORDS.items():
        for word in (size, *words):
            add(word, "size", size)
    for motion, words in MOTION_WORDS.items():
        for word in (motion, *words):
            add(word, "motion", motion)
    for direction in ("left", "right"):
        for verb in ("moves", "moving", "move", "goes", "going", "slides", "sliding", "heading"):
            add(f"{verb} {direction}", "motion", f"moves to the {direction}")
            add(f"{verb} to the {direction}", "motion", f"moves to the {direction}")
    for direction in ("up", "down"):
        for verb in ("moves", "moving", "move", "goes", "going"):
            add(f"{verb} {direction}", "motion", f"moves {direction}")
    for word in ("still", "stays still", "staying still", "stationary", "motionless"):
        add(word, "motion", "stays still")
    for background, phrases in BACKGROUND_WORDS.items():
        for phrase in phrases:
            add(phrase, "background", background)
    # Neither black nor gray is an object colour, so wherever they appear they name the
    # background ("black ball" is a ball on black: the nearest thing the world can draw).
    for word, background in (("black", "black"), ("dark", "black"), ("gray", "gray")):
        add(word, "background", background)
        for phrase in ("{} background", "{} backdrop", "on {}", "on a {} background"):
            add(phrase.format(word), "background", background)
        add(f"the background is {word}", "background", background)
    add("grey", "background", "gray")
    add("on grey", "background", "gray")
    add("grey background", "background", "gray")
    add("the background is grey", "background", "gray")
    for word, count in (("one", 1), ("single", 1), ("two", 2), ("2", 2), ("pair", 2)):
        add(word, "count", str(count))
    for word in ("shape", "shapes", "object", "objects", "thing", "things"):
        add(word, "noun", "")
    return table


PHRASES = _phrase_table()
LONGEST_PHRASE = max(len(p) for p in PHRASES)
# Words that carry no attribute and are not worth reporting as unused.
FUNCTION_WORDS = frozenset(
    "a an the and with of is are it its on in to this that while one another other".split()
)


# ---- What a prompt states ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StatedObject:
    """One object's stated attributes; None where the prompt says nothing."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    motion: str | None = None

    def stated(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class StatedPrompt:
    objects: tuple[StatedObject, ...]  # in the order the prompt names them
    background: str | None
    count: int | None  # an object count the prompt states in words ("two shapes")
    unused: tuple[str, ...]  # words that name no attribute, in order
    notes: tuple[str, ...]  # attributes given twice or that do not fit, said in words


def words_of(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


def _matches(words: list[str]):
    """(slot, value, word) triples by greedy longest match; unmatched words have slot None."""
    i = 0
    while i < len(words):
        for n in range(min(LONGEST_PHRASE, len(words) - i), 0, -1):
            hit = PHRASES.get(tuple(words[i : i + n]))
            if hit is not None:
                yield (*hit, " ".join(words[i : i + n]))
                i += n
                break
        else:
            yield None, None, words[i]
            i += 1


def parse_prompt(prompt: str) -> StatedPrompt:
    """Binds attributes to objects by order: size and colour go to the next shape noun, a motion
    to the last object named (or the next, when none is named yet). A modifier given twice
    before its noun starts a new object ("red and blue" names two)."""
    objects: list[dict] = []
    pending: dict = {}
    background, count, unused, notes = None, None, [], []

    def flush(pending):
        if pending:
            objects.append(dict(pending))
        return {}

    for slot, value, word in _matches(words_of(prompt)):
        if slot is None:
            if word not in FUNCTION_WORDS:
                unused.append(word)
        elif slot == "background":
            if background not in (None, value):
                notes.append(f"background {value!r} after {background!r}: kept the first")
            background = background or value
        elif slot == "count":
            count = int(value)
        elif slot == "noun":  # "a red thing" is an object; "two shapes" alone is a count
            pending = flush(pending)
        elif slot == "shape":
            pending[slot] = value
            pending = flush(pending)
        elif slot == "motion":
            last = objects[-1] if objects and not pending else None
            if last is not None and "motion" not in last:
                last["motion"] = value
            elif slot in pending:
                pending = flush(pending)
                pending[slot] = value
            else:
                pending[slot] = value
        else:  # colour, size: before their noun
            if slot in pending:
                pending = flush(pending)
            pending[slot] = value
    if pending and objects and set(pending) == {"motion"} and "motion" not in objects[-1]:
        objects[-1]["motion"] = pending.pop("motion")
    flush(pending)
    stated = tuple(StatedObject(**o) for o in objects)
    return StatedPrompt(stated, background, count, tuple(unused), tuple(notes))
