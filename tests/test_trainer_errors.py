"""`soraj train`, `soraj train-vae` and `soraj train-captioner` refuse bad input (flags, config
values, paths, a checkpoint past the requested total) with one line on stderr and exit code 2
before any work; an error raised once steps run keeps its traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from test_resume import OVERRIDES

SHIPPED_VAE = "experiments/shapes/checkpoint/vae"


def soraj(*args, code=None) -> subprocess.CompletedProcess:
    """The command as a user runs it (`python -m soraj ...`), or `code` then cli.main(args)."""
    start = ["-m", "soraj"] if code is None else ["-c", code]
    return subprocess.run(
        [sys.executable, *start, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--config.vae_checkpoint="],
            "config.vae_checkpoint is empty: give a `soraj train-vae` workdir or export",
        ),
        (
            ["train", "--config=soraj/configs/t2v.py:huge"],
            "unknown t2v config 'huge'; allowed: "
            "['B/2', 'L/2', 'S/2', 'XL/2', 'tiny', 'tiny64', 'tiny64-fold', 'tiny64-frames']",
        ),
        (
            ["train", "--config.vae_checkpoint=/nowhere/vae"],
            "no VAE export at /nowhere/vae",
        ),
        (
            ["train", "--config.total_steps=many"],
            "--config.total_steps=many: invalid literal for int() with base 10: 'many'",
        ),
        (
            ["train", "--config.data.num_clip=3"],
            "unknown config field 'num_clip'; Did you mean \"num_clips\"",
        ),
        (
            ["train", "--config=soraj/configs/missing.py"],
            "No such file or directory: 'soraj/configs/missing.py'",
        ),
        (
            ["train", f"--config.vae_checkpoint={SHIPPED_VAE}", "--config.sample_every=-1"],
            "config.sample_every must be an integer ≥ 0 (0: never), got -1",
        ),
        (["train-vae", "--config.preset=huge"], "unknown VAE preset 'huge'; allowed: ["),
        (["train-vae", "--config=soraj/configs/vae.py:huge"], "unknown VAE config 'huge'"),
        (
            ["train-vae", "--config.loss.pixel_loss=l2"],
            "unknown config.loss.pixel_loss 'l2'; allowed: ('l1', 'charbonnier')",
        ),
        (
            ["train-vae", "--config.save_every=0"],
            "config.save_every must be an integer ≥ 1 (a run always saves its last step",
        ),
        (["train-vae", "--config.log_every=-5"], "config.log_every must be an integer ≥ 0"),
        (
            ["train-vae", "--config.latent_frame_fold=3"],
            "latent_frame_fold must be one of (1, 2, 4, 8), got 3",
        ),
        (["train-expander", "--config.log_every=-5"], "config.log_every must be an integer ≥ 0"),
        (
            ["train", "--config.total_steps=0"],
            "config.total_steps must be an integer ≥ 1 (the steps the run trains), got 0",
        ),
        (
            ["train-vae", "--config.distributed.step_timeout=-5"],
            "config.distributed.step_timeout must be a finite number of seconds ≥ 0 (0: off), "
            "e.g. 0, 600 or 1800.5; got -5",
        ),
        (
            ["train-vae", "--config.max_nonfinite_steps=0"],
            "config.max_nonfinite_steps must be an integer ≥ 1",
        ),
        (
            ["train-captioner", "--config.distributed.step_timeout=-1"],
            "config.distributed.step_timeout must be a finite number of seconds ≥ 0",
        ),
        (
            ["train-captioner", "--config.finetune_steps=-1"],
            "config.finetune_steps must be an integer ≥ 0 (steps of the phase), got -1",
        ),
        (
            ["train", "--config.data.fps=0"],
            "config.data.fps must be a finite number of frames per second > 0 (e.g. 8, 24 or "
            "29.97), or unset for the source's own rate; got 0.0",
        ),
        (["train", "--config.data.fps=inf"], "config.data.fps must be a finite number"),
        (
            ["train", "--config.data.source=class_folder", "--config.data.root=/nowhere"],
            "config.data.source='class_folder' needs config.data.fps",
        ),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, args, message):
    command, *flags = args
    workdir = tmp_path / "run"
    done = soraj(command, f"--workdir={workdir}", *flags)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"soraj {command}: error: ")
    assert message in lines[0]
    assert not workdir.exists()


def test_a_checkpoint_past_the_total_is_one_line_and_one_at_it_exports_again(tmp_path):
    workdir = tmp_path / "run"
    tiny_dit = [f"--config.{key}={value}" for key, value in OVERRIDES.items()]
    done = soraj("train", f"--workdir={workdir}", *tiny_dit, "--config.total_steps=2")
    assert done.returncode == 0, done.stderr
    done = soraj("train", f"--workdir={workdir}", *tiny_dit, "--config.total_steps=1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == (
        f"soraj train: error: the latest checkpoint in {workdir.absolute()}/checkpoints is of "
        "step 2, past config.total_steps = 1: the run is already past the requested total; "
        "raise config.total_steps above 2 to continue it"
    )
    export = workdir / "export" / "dit"
    shutil.rmtree(export)  # as if lost: the same command writes it again, from step 2
    done = soraj("train", f"--workdir={workdir}", *tiny_dit, "--config.total_steps=2")
    assert done.returncode == 0, done.stderr
    assert "already at the last step (2): no step to run; DiT export written again" in done.stdout
    assert json.loads((export / "config.json").read_text())["step"] == 2
    metrics = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2]  # no step ran again


def test_a_missing_workdir_flag_is_one_line():
    done = soraj("train-vae")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "soraj train-vae: error: flag --workdir=None: Flag --workdir must have a value other "
        "than None."
    )


BROKEN_STEP = """
import sys
from soraj import cli, train

def broken_train_step(*args, **kwargs):
    raise ValueError("a bug inside the train step")

train.train_step = broken_train_step
cli.main(sys.argv[1:])
"""


def test_a_value_error_inside_a_step_keeps_its_traceback(tmp_path):
    tiny_dit = {**OVERRIDES, "total_steps": 2}  # test_resume.py's DiT: set-up takes seconds
    flags = [f"--config.{key}={value}" for key, value in tiny_dit.items()]
    done = soraj("train", f"--workdir={tmp_path / 'run'}", *flags, code=BROKEN_STEP)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr
    assert "ValueError: a bug inside the train step" in done.stderr
    assert "soraj train: error:" not in done.stderr
