"""A damaged copy of the shipped bundle ends each command that loads it in one line naming the
file and the problem, with a non-zero exit: no traceback, and nothing printed afterwards by
background threads (orbax's asyncio restore once printed hundreds of "Event loop is closed"
tracebacks for one cut file).

Each test runs the real `soraj` command in a subprocess on a copy of
experiments/shapes/checkpoint in tmp_path; the shipped folder itself is never touched.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parent.parent / "experiments" / "shapes" / "checkpoint"
PROMPT = "A large red circle moves to the right. The background is black."
# The key of config.json each part cannot be rebuilt without.
REQUIRED_KEY = {"dit": "dit_config", "vae": "vae_config", "captioner": "captioner_config"}


# ---- The damage -------------------------------------------------------------------------------


def truncate_array_file(part: Path) -> Path:
    """The largest array data file, cut in half (a copy or download that stopped)."""
    data = max((part / "params" / "ocdbt.process_0" / "d").iterdir(), key=os.path.getsize)
    os.truncate(data, data.stat().st_size // 2)
    return data


def remove_manifest(part: Path) -> Path:
    manifest = part / "params" / "manifest.ocdbt"
    manifest.unlink()
    return manifest


def malform_config(part: Path) -> Path:
    config = part / "config.json"
    config.write_text(config.read_text()[:40])  # cut mid-object
    return config


def drop_required_key(part: Path) -> Path:
    config = part / "config.json"
    stored = json.loads(config.read_text())
    del stored[REQUIRED_KEY[part.name]]
    config.write_text(json.dumps(stored))
    return config


def corrupt_array_bytes(part: Path) -> Path:
    """Bytes overwritten in place, the length kept: only reading the arrays finds it."""
    data = max((part / "params" / "ocdbt.process_0" / "d").iterdir(), key=os.path.getsize)
    with open(data, "r+b") as file:
        file.write(b"\0" * 8)  # the zstd frame header of the first chunk there
    return part / "params"


DAMAGES = {
    "truncated array file": truncate_array_file,
    "missing manifest.ocdbt": remove_manifest,
    "malformed config.json": malform_config,
    "config.json missing a required key": drop_required_key,
}


# ---- Running the command ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def input_video(tmp_path_factory):
    from soraj.data.shapes import ShapesSource
    from soraj.data.video_io import write_mp4

    clip = ShapesSource(1, 9, 32, 32, seed=3, split="all")[0]["video"]
    return str(write_mp4(tmp_path_factory.mktemp("input") / "clip.mp4", clip, fps=8))


def command_line(command: str, bundle: Path, out: Path, input_video: str) -> list[str]:
    checkpoint, out = ["--checkpoint", str(bundle)], ["--out", str(out)]
    if command == "generate":
        return ["generate", *checkpoint, *out, "--prompt", PROMPT, "--steps", "2"]
    if command == "demo":
        return ["demo", *checkpoint, *out, "--steps", "2"]
    if command == "reconstruct":
        return ["reconstruct", *checkpoint, *out, "--input", input_video]
    if command == "evaluate":  # its --out is the scores' JSON file
        return ["evaluate", *checkpoint, "--out", f"{out[1]}/scores.json", "--num-prompts", "1"]
    return ["caption", *checkpoint, "--input", input_video]


def run_damaged(tmp_path, input_video, command, part, damage):
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED, bundle)
    damaged = damage(bundle / part)
    argv = command_line(command, bundle, tmp_path / "out", input_video)
    env = dict(os.environ, SORAJ_HUGE_PAGES="0")  # no re-run of the command for its tunable
    result = subprocess.run(
        [sys.executable, "-m", "soraj", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return result, damaged


def check_one_line_error(result, damaged: Path, command: str):
    stderr = result.stderr
    assert result.returncode != 0, f"exit 0 on a damaged bundle; stderr:\n{stderr}"
    assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr
    assert len(stderr.splitlines()) <= 3, stderr  # the error and at most two status notes
    error = stderr.splitlines()[-1]
    assert error.startswith(f"soraj {command}: error: "), stderr
    assert str(damaged) in error, f"the message does not name {damaged}:\n{error}"


# Every damage for each command's own export; generate also reads the VAE's config itself
# (its geometry checks) and demo loads through generate, so one case each covers those paths.
CASES = [
    *[("generate", "dit", name) for name in DAMAGES],
    ("generate", "vae", "config.json missing a required key"),
    *[("reconstruct", "vae", name) for name in DAMAGES],
    *[("caption", "captioner", name) for name in DAMAGES],
    ("demo", "dit", "truncated array file"),
    ("evaluate", "dit", "malformed config.json"),
    ("evaluate", "dit", "truncated array file"),
]


@pytest.mark.parametrize(("command", "part", "damage"), CASES)
def test_damaged_bundle_gives_one_line_naming_the_file(
    tmp_path, input_video, command, part, damage
):
    result, damaged = run_damaged(tmp_path, input_video, command, part, DAMAGES[damage])
    check_one_line_error(result, damaged, command)


def test_corrupt_arrays_are_one_line_too(tmp_path, input_video):
    """Damage that only reading shows: the read's error, converted, and nothing after it."""
    result, params = run_damaged(tmp_path, input_video, "generate", "dit", corrupt_array_bytes)
    check_one_line_error(result, params, "generate")
    assert ": array dit." in result.stderr


# ---- soraj evaluate: checked as generate checks, before any weights load -----------------------


def test_evaluate_on_a_missing_path_is_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "soraj", "evaluate", "--checkpoint", str(missing)],
        capture_output=True,
        text=True,
        env=dict(os.environ, SORAJ_HUGE_PAGES="0"),
        timeout=300,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"soraj evaluate: error: no DiT export at {missing}: it does not exist"
    ]


def test_evaluate_checks_the_clip_size_against_the_bundle_before_loading(monkeypatch):
    from soraj import cli, generate

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the clip size was checked")

    monkeypatch.setattr(generate.Generator, "load", refuse)
    # The shipped bundle: VAE factor 4 × DiT patch 2, and 1 + 4·k frames.
    for flags, message in (
        (["--height", "36"], "--height must be a positive multiple of 8"),
        (["--frames", "8"], "--frames must be 1 + 4·k"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["evaluate", "--checkpoint", str(SHIPPED), *flags])
        assert str(exit_info.value.code).startswith(f"soraj evaluate: error: {message}")
