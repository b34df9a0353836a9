"""`soraj generate` rejects bad input with a clear message before loading any weights."""

import json

import pytest

from soraj import cli, generate


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """A bundle with configs but no weights: any attempt to load them fails the test."""
    for name, fields in (
        (
            "vae",
            {
                "kind": "vae",
                "vae_config": {
                    "temporal_downsample": [True, True],
                    "spatial_downsample": [True, True],
                },
            },
        ),
        ("dit", {"kind": "dit", "dit_config": {"patch_size": [1, 2, 2]}}),
    ):
        (tmp_path / "bundle" / name / "params").mkdir(parents=True)
        (tmp_path / "bundle" / name / "config.json").write_text(json.dumps(fields))

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(generate.Generator, "load", refuse)
    return tmp_path / "bundle"


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", *argv])
    return str(exit_info.value.code)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--frames", "6"], "--frames must be 1 + 4·k"),
        (["--frames", "0"], "--frames must be a positive integer"),
        (["--frames", "-5"], "--frames must be a positive integer"),
        (["--height", "36"], "--height must be a positive multiple of 8"),
        (["--width", "4"], "--width must be a positive multiple of 8"),
        (["--steps", "-1"], "--steps must be a positive integer"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--prompt", "   "], "--prompt is empty"),
    ],
)
def test_bad_values(bundle, capsys, flags, message):
    argv = ["--checkpoint", str(bundle), "--prompt", "A small red circle moves up.", *flags]
    assert message in run(argv, capsys)


def test_missing_checkpoint(tmp_path, capsys):
    argv = ["--checkpoint", str(tmp_path / "nowhere"), "--prompt", "a red circle"]
    assert "does not exist" in run(argv, capsys)


def test_checkpoint_without_exports(tmp_path, capsys):
    argv = ["--checkpoint", str(tmp_path), "--prompt", "a red circle"]
    assert f"no DiT export at {tmp_path}: looked for config.json and params/" in run(argv, capsys)


def test_output_path_is_a_file(bundle, tmp_path, capsys):
    existing = tmp_path / "taken.mp4"
    existing.write_text("already here")
    argv = ["--checkpoint", str(bundle), "--prompt", "a red circle", "--out", str(existing)]
    assert "is a file" in run(argv, capsys)
    assert existing.read_text() == "already here"  # nothing already written is touched


def test_unknown_command():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["paint"])
    assert "allowed:" in str(exit_info.value.code)
