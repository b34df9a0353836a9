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
