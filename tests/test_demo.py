"""`soraj demo`: a missing checkpoint is refused at once (training a quick one needs its own
flag), and the demo generates through the same request as `soraj generate`."""

import subprocess
import sys
from pathlib import Path

import av
import pytest

from soraj import cli, demo

SHIPPED = Path("experiments/shapes/checkpoint")


def test_a_missing_checkpoint_is_refused_without_training(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "soraj", "demo", "--checkpoint", str(tmp_path / "missing")]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"soraj demo: error: --checkpoint {tmp_path / 'missing'} does not exist")
    assert "--train-quick-checkpoint" in line
    assert not out.exists()  # no quick checkpoint was started


@pytest.fixture
def no_training(monkeypatch):
    def refuse(workdir):
        raise AssertionError("a quick checkpoint was trained")

    monkeypatch.setattr(demo, "train_quick_checkpoint", refuse)


def test_training_needs_its_flag_and_no_checkpoint_beside_it(no_training, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--train-quick-checkpoint", "--checkpoint", str(SHIPPED)])
    assert "cannot be combined" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:  # bad flags are refused before training
        cli.main(["demo", "--train-quick-checkpoint", "--steps", "0"])
    assert "--steps must be a positive integer" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "--train-quick-checkpoint" in capsys.readouterr().out


def test_the_flag_trains_then_generates_from_the_quick_checkpoint(monkeypatch, tmp_path, capsys):
    trained = []

    def stand_in(workdir):  # the shipped bundle stands in for 15 minutes of training
        trained.append(workdir)
        return SHIPPED

    monkeypatch.setattr(demo, "train_quick_checkpoint", stand_in)
    out = tmp_path / "demo"
    cli.main(["demo", "--train-quick-checkpoint", "--steps", "2", "--out", str(out)])
    assert trained == [out / "quick_checkpoint"]
    printed = capsys.readouterr()
    assert "shapes probe: " in printed.out
    (mp4,) = out.glob("*.mp4")
    assert f"wrote mp4: {mp4}" in printed.out
    with av.open(str(mp4)) as container:  # the shipped model's rate: the Shapes world's
        assert float(container.streams.video[0].average_rate) == 8.0
