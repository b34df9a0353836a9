"""End to end on Shapes: train the VAE and the DiT for 2 steps each, restart both from their
checkpoints, and sample a video with the `soraj` CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from soraj import train, train_vae
from soraj.configs import t2v, vae
from soraj.data.video_io import read_video

pytestmark = pytest.mark.slow


def tiny_vae_config(total_steps):
    config = vae.get_config("tiny")
    config.data.num_frames, config.data.height, config.data.width = 5, 16, 16
    config.data.num_clips = 64
    config.batch_size = 4
    config.total_steps = total_steps
    config.log_every = config.save_every = config.sample_every = 1
    config.num_stats_batches = 1
    return config


def tiny_dit_config(total_steps, vae_dir):
    config = t2v.get_config("tiny")
    config.vae_checkpoint = str(vae_dir)
    config.data.num_frames, config.data.height, config.data.width = 5, 16, 16
    config.data.num_clips = 64
    config.model.width, config.model.depth, config.model.num_heads = 32, 1, 2
    config.batch_size = 4
    config.total_steps = total_steps
    config.log_every = config.save_every = config.sample_every = 1
    config.sample.steps = 2
    config.diffusion.shift = 3.0  # the export must carry it to the sampler
    config.data.fps = 12.0  # and the clips' frame rate to the written video
    return config


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_train_restart_and_generate(tmp_path):
    vae_dir, dit_dir = tmp_path / "vae", tmp_path / "dit"

    train_vae.train_and_evaluate(tiny_vae_config(2), vae_dir)
    # Restart with a longer budget: training continues from the step-2 checkpoint.
    state = train_vae.train_and_evaluate(tiny_vae_config(3), vae_dir)
    assert int(state.step) == 3
    assert [m["step"] for m in read_metrics(vae_dir)] == [1, 2, 3]
    assert (vae_dir / "samples" / "reconstruction_000003.gif").is_file()

    train.train_and_evaluate(tiny_dit_config(2, vae_dir), dit_dir)
    state = train.train_and_evaluate(tiny_dit_config(3, vae_dir), dit_dir)
    assert int(state.step) == 3
    metrics = read_metrics(dit_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for record in metrics:
        assert {"loss", "learning_rate", "samples_per_s"} <= set(record)
        assert np.isfinite(record["loss"])

    out = tmp_path / "generated"
    command = [
        sys.executable,
        "-m",
        "soraj",
        "generate",
        "--checkpoint",
        str(dit_dir),
        "--prompt",
        "A small green triangle moves up. The background is gray.",
        "--frames",
        "5",
        "--height",
        "16",
        "--width",
        "16",
        "--seed",
        "3",
        "--steps",
        "2",
        "--guidance",
        "2.5",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    settings_file = next(out.glob("*.json"))
    assert f"wrote json: {settings_file}" in result.stdout
    settings = json.loads(settings_file.read_text())
    expected = {
        "prompt": "A small green triangle moves up. The background is gray.",
        "checkpoint": str(dit_dir),
        "frames": 5,
        "height": 16,
        "width": 16,
        "seed": 3,
        "steps": 2,
        "guidance": 2.5,
    }
    assert {k: settings[k] for k in expected} == expected
    assert settings["seconds"] > 0
    assert settings["compile_seconds"] > 0 and settings["seconds_per_step"] > 0
    stored = json.loads((dit_dir / "export" / "dit" / "config.json").read_text())
    assert stored["time_shift"]["shift"] == 3.0 and not stored["time_shift"]["shift_by_tokens"]
    assert stored["trained_on"]["fps"] == 12.0
    video, fps = read_video(settings["files"]["mp4"])
    assert video.shape[0] == 5 and fps == settings["fps"] == 12.0
    assert next(out.glob("*.gif")).stat().st_size > 0
