"""`soraj train-expander` runs end to end on a few pairs and its export loads and expands."""

import json
import subprocess
import sys

import pytest

from soraj.captions.expander_model import LearnedExpander
from soraj.captions.train_expander import make_pairs
from soraj.data.shapes import parse_dense_caption


def test_pairs_come_from_one_scene_each():
    prompts, targets = make_pairs(50, seed=0, num_frames=9)
    assert len(set(prompts)) > 25
    assert all(parse_dense_caption(t) for t in targets)
    assert make_pairs(5, seed=0, num_frames=9) == (prompts[:5], targets[:5])


@pytest.mark.slow
def test_train_export_load_and_expand(tmp_path):
    workdir = tmp_path / "expander"
    command = [sys.executable, "-m", "soraj", "train-expander"]
    command += ["--config=soraj/configs/expander.py:tiny", f"--workdir={workdir}"]
    command += ["--config.num_pairs=32", "--config.total_steps=3", "--config.log_every=1"]
    command += ["--config.model.depth=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote the expander export to" in done.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    expander = LearnedExpander.load(workdir)
    assert expander.config.depth == 1
    # Three steps teach nothing: the check rejects the samples and rule answers, saying so.
    expansion = expander.expand("a red ball going left")
    assert expansion.ok
    scene = parse_dense_caption(expansion.revised)
    assert (scene.objects[0].colour, scene.objects[0].motion) == ("red", "moves to the left")


def test_unknown_config_is_refused():
    from soraj.configs import expander

    with pytest.raises(ValueError, match="allowed: \\['tiny'\\]"):
        expander.get_config("huge")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("log_every", -1, "config.log_every must be an integer ≥ 0 (0: never), got -1"),
        ("total_steps", 0, "config.total_steps must be an integer ≥ 1 (the steps the run"),
        ("num_pairs", -5, "config.num_pairs must be an integer ≥ 1 (training pairs), got -5"),
        ("encode_batch", 0, "config.encode_batch must be an integer ≥ 1 (prompts per MiniLM"),
        ("learning_rate", float("nan"), "config.learning_rate must be a finite number > 0"),
        ("weight_decay", -0.1, "config.weight_decay must be a finite number ≥ 0, got -0.1"),
        ("model.depth", 0, "config.model.depth must be an integer ≥ 1 (a model size), got 0"),
        ("model.num_heads", 3, "config.model.width = 128 must be a multiple of"),
    ],
)
def test_bad_settings_are_a_value_error_before_any_work(monkeypatch, field, value, message):
    """`soraj train-expander` can print a ValueError of set-up as one line (as the other
    trainers' prepare errors): nothing is drawn, encoded or written first."""
    from soraj.captions import train_expander
    from soraj.configs import expander

    def no_work(*args, **kwargs):
        raise AssertionError("set-up work ran before the config was checked")

    monkeypatch.setattr(train_expander, "make_pairs", no_work)
    monkeypatch.setattr(train_expander, "MiniLMEncoder", no_work)
    config = expander.get_config("tiny")
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ValueError) as refused:
        train_expander.prepare(config, "/nowhere/expander")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_unknown_model_fields_are_named():
    from soraj.captions.train_expander import check_config
    from soraj.configs import expander

    config = expander.get_config("tiny")
    config.model.unlock()
    config.model.heads = 4
    with pytest.raises(ValueError, match=r"config.model has unknown fields \['heads'\]; allowed"):
        check_config(config)
