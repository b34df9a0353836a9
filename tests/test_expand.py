"""Prompt expansion: every backend keeps what the prompt states and writes the dense grammar,
or says why not; the openai backend is tested against a loopback fake server."""

import collections
import itertools
import json
import socket

import fake_openai_server
import numpy as np
import pytest
from fake_openai_server import Answer

from soraj import cli, generate
from soraj.captions import expand_cli, expander_model
from soraj.captions.expand import BACKENDS, Expansion, expand_prompt
from soraj.captions.expand_openai import few_shot_pairs
from soraj.captions.short_prompts import STYLES, shorten
from soraj.data.shapes import HELD_OUT_PAIRS, MOTIONS, parse_dense_caption, sample_scene

fake_openai = fake_openai_server.fake_openai  # the fixture


def kept_everything(stated, scene) -> bool:
    """Written apart from expand.violations, so the test does not grade itself."""
    count = len(stated.objects) or stated.count
    if count and len(scene.objects) != count:
        return False
    if stated.background and scene.background != stated.background:
        return False
    for order in itertools.permutations(scene.objects, len(stated.objects)):
        if all(
            all(getattr(drawn, k) == v for k, v in vars(obj).items() if v is not None)
            for obj, drawn in zip(stated.objects, order, strict=True)
        ):
            return True
    return False


# ---- rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_rule_keeps_stated_attributes_of_random_short_prompts(split):
    rng = np.random.default_rng(5)
    for i in range(400):
        prompt, stated = shorten(sample_scene(rng, 9, split), rng, STYLES[i % len(STYLES)])
        expansion = expand_prompt(prompt, "rule", seed=i)
        assert expansion.ok and expansion.backend == "rule"
        scene = parse_dense_caption(expansion.revised)
        assert kept_everything(stated, scene), (prompt, expansion.revised)


def test_rule_fills_from_the_prior_and_is_seeded():
    revised = [expand_prompt("a red ball", "rule", seed=s).revised for s in range(600)]
    assert revised[:5] == [expand_prompt("a red ball", "rule", seed=s).revised for s in range(5)]
    scenes = [parse_dense_caption(text) for text in revised]
    assert all(len(s.objects) == 1 for s in scenes)  # never an object nobody asked for
    motions = collections.Counter(s.objects[0].motion for s in scenes)
    backgrounds = collections.Counter(s.background for s in scenes)
    assert set(motions) == set(MOTIONS) and min(motions.values()) > 600 / 5 * 0.7
    assert min(backgrounds.values()) > 600 / 2 * 0.85


def test_rule_draws_a_held_out_pair_only_when_the_user_names_it():
    for seed in range(300):
        scene = parse_dense_caption(expand_prompt("a purple shape", "rule", seed=seed).revised)
        assert (scene.objects[0].colour, scene.objects[0].shape) not in HELD_OUT_PAIRS
    scene = parse_dense_caption(expand_prompt("purple triangle", "rule").revised)
    assert (scene.objects[0].colour, scene.objects[0].shape) == ("purple", "triangle")


def test_rule_says_what_it_could_not_use():
    expansion = expand_prompt("cool clip of a crimson ball lol", "rule")
    assert "could not use: cool, clip, crimson, lol" in expansion.message
    dense = "A small red circle moves up. The background is black."
    assert expand_prompt(dense, "rule").revised == dense


def test_none_empty_and_unknown_backend():
    assert expand_prompt("a red ball", "none").revised == "a red ball"
    assert not expand_prompt("  ", "rule").ok
    with pytest.raises(ValueError, match="allowed: " + ", ".join(BACKENDS)):
        expand_prompt("a red ball", "magic")


# ---- openai ---------------------------------------------------------------------------------


def test_openai_sends_training_captions_as_few_shot_and_keeps_a_good_reply(fake_openai):
    fake_openai.push(Answer(text="A large red circle moves up. The background is gray."))
    expansion = expand_prompt(
        "a red ball going up", "openai", endpoint=fake_openai.url, model="lm", timeout_s=5
    )
    assert expansion.ok and expansion.backend == "openai"
    assert expansion.revised == "A large red circle moves up. The background is gray."
    messages = fake_openai.requests[0]["messages"]
    assert [m["role"] for m in messages[:3]] == ["system", "user", "assistant"]
    shots = few_shot_pairs()
    assert messages[2]["content"] == shots[0][1]
    assert all(parse_dense_caption(dense) for _, dense in shots)
    assert messages[-1]["content"] == "a red ball going up"
    assert fake_openai.requests[0]["temperature"] <= 0.3


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (Answer(text="Sure! Here is a video of a red ball."), "not in the caption grammar"),
        (Answer(text="A large blue circle moves up. The background is gray."), "drops what"),
        (Answer(kind="error500"), "no usable reply"),
        (Answer(kind="malformed"), "no usable reply"),
        (Answer(kind="slow", delay_s=5), "no usable reply"),
    ],
)
def test_openai_falls_back_to_the_original_prompt(fake_openai, answer, why):
    fake_openai.push(answer, answer, answer)  # the client retries
    expansion = expand_prompt(
        "a red ball going up", "openai", endpoint=fake_openai.url, model="lm", timeout_s=0.5
    )
    assert not expansion.ok and expansion.revised == "a red ball going up"
    assert why in expansion.message


def test_openai_refused_connection_falls_back():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    expansion = expand_prompt("a red ball", "openai", endpoint=url, model="lm", timeout_s=1)
    assert not expansion.ok and "no usable reply" in expansion.message


# ---- learned --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learned():
    if not (expander_model.SHIPPED_EXPANDER / "config.json").exists():
        pytest.skip("no shipped expander checkpoint")
    return expander_model.LearnedExpander.load()


def test_learned_keeps_stated_attributes(learned):
    rng = np.random.default_rng(9)
    for i in range(12):
        prompt, stated = shorten(sample_scene(rng, 9, "train"), rng)
        expansion = learned.expand(prompt, seed=i)
        assert expansion.ok and kept_everything(stated, parse_dense_caption(expansion.revised))


def test_learned_falls_back_to_rule_and_says_so(learned, monkeypatch):
    monkeypatch.setattr(learned, "sample", lambda prompts, seed: ["a blue box"] * len(prompts))
    expansion = learned.expand("a red ball going left", seed=0)
    assert expansion.ok and expansion.backend == "rule"
    assert "learned: all 8 samples failed the check (unparsable); used rule" in expansion.message
    scene = parse_dense_caption(expansion.revised)
    assert (scene.objects[0].colour, scene.objects[0].motion) == ("red", "moves to the left")


# ---- soraj generate --expand ----------------------------------------------------------------

SHIPPED = str(expander_model.SHIPPED_EXPANDER.parent / "checkpoint")


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(generate.Generator, "load", refuse)


def generate_exit(argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--checkpoint", SHIPPED, *argv])
    return str(exit_info.value.code)


def test_generate_expands_prints_and_stores_the_revised_prompt(tmp_path, capsys):
    argv = ["--prompt", "a red ball going right", "--expand", "rule", "--steps", "2"]
    cli.main(["generate", "--checkpoint", SHIPPED, *argv, "--out", str(tmp_path)])
    revised = expand_prompt("a red ball going right", "rule", seed=0).revised
    assert f"revised prompt (rule): {revised}" in capsys.readouterr().out
    (stored,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert stored["prompt"] == "a red ball going right" and stored["expand"] == "rule"
    assert stored["revised_prompt"] == revised and stored["expansion"]["ok"]


def test_generate_refuses_bad_expansion_input_before_loading(no_weights, capsys, monkeypatch):
    assert generate_exit(["--prompt", "a red ball", "--expand", "magic"]) == "2"
    assert "choose from 'none', 'rule', 'learned', 'openai'" in capsys.readouterr().err
    long_prompt = "a very small red ball " * 8
    assert "the prompt is 42 MiniLM tokens" in generate_exit(["--prompt", long_prompt])
    assert "needs --expand-endpoint" in generate_exit(["--prompt", "a ball", "--expand", "openai"])
    missing = ["--expand", "learned", "--expander-checkpoint", "/nowhere"]
    assert "no expander export at /nowhere" in generate_exit(["--prompt", "a ball", *missing])
    # A revised prompt over the limit is refused too, before the generator loads.
    long = Expansion("a ball", long_prompt, "rule", True, "")
    monkeypatch.setattr(expand_cli, "expand_prompt", lambda *a, **k: long)
    assert "the revised prompt is 42" in generate_exit(["--prompt", "a ball", "--expand", "rule"])
