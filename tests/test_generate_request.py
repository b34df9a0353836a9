"""The request `soraj generate` and `soraj demo` share (soraj/generate_request.py): a class model
refuses an unknown class in one line before any weights load, --fps is checked, and videos are
written at the frame rate the checkpoint was trained on or at --fps (read back with PyAV)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest
from PIL import Image

from soraj import cli, generate
from soraj.data.shapes import FPS as SHAPES_FPS
from soraj.generate_request import GenerateRequest, check_request, output_fps

SHIPPED = Path("experiments/shapes/checkpoint")
CLASSES = ["blue_things", "red_things", "still_images"]
PROMPT = "A large red circle moves to the right. The background is black."
VAE_FIELDS = {
    "kind": "vae",
    "vae_config": {"temporal_downsample": [True, True], "spatial_downsample": [True, True]},
}


def configs_only_bundle(root: Path, dit_fields: dict) -> Path:
    """A bundle with configs but empty params folders: loading its weights would fail."""
    for name, fields in (("vae", VAE_FIELDS), ("dit", {"kind": "dit", **dit_fields})):
        (root / name / "params").mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps(fields))
    return root


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(generate.Generator, "load", refuse)


@pytest.fixture
def class_bundle(tmp_path, no_weights):
    dit = {"dit_config": {"patch_size": [1, 2, 2], "conditioning": "class"}, "classes": CLASSES}
    return configs_only_bundle(tmp_path / "classes", dit)


@pytest.fixture
def text_bundle(tmp_path, no_weights):
    return configs_only_bundle(tmp_path / "text", {"dit_config": {"patch_size": [1, 2, 2]}})


def generate_error(argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", *argv])
    return str(exit_info.value.code)


# ---- Class-conditional checkpoints ----------------------------------------------------------


def test_an_unknown_class_is_one_line_naming_every_class(class_bundle, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "soraj", "generate", "--checkpoint", str(class_bundle)]
        + ["--prompt", "green_things", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "soraj generate: error: 'green_things' is not a class of this model; allowed: a class "
        "name (blue_things, red_things, still_images) or its index 0..2"
    ]
    assert not (tmp_path / "out").exists()


def test_class_names_and_indices_pass_the_checks(class_bundle, tmp_path):
    for prompt in ("red_things", "2"):
        request = GenerateRequest(prompt, str(class_bundle), out=str(tmp_path))
        assert check_request(request).mode is None
    assert "index 0..2" in generate_error(["--checkpoint", str(class_bundle), "--prompt", "3"])


def test_a_class_model_refuses_expansion_and_prompting_modes(class_bundle):
    argv = ["--checkpoint", str(class_bundle), "--prompt", "red_things"]
    assert "this checkpoint is class-conditional" in generate_error([*argv, "--expand", "rule"])
    assert "need a text-conditional checkpoint" in generate_error([*argv, "--loop"])


# ---- Frame rate -----------------------------------------------------------------------------


@pytest.mark.parametrize("fps", ["0", "-2", "nan", "inf"])
def test_fps_must_be_a_positive_number(text_bundle, fps):
    argv = ["--checkpoint", str(text_bundle), "--prompt", PROMPT, "--fps", fps]
    assert "--fps must be a positive number of frames per second" in generate_error(argv)


def test_the_frame_rate_is_the_training_datas_else_the_shapes_worlds():
    assert output_fps(None, {"trained_on": {"fps": 12.0}}) == (12.0, None)
    assert output_fps(30.0, {"trained_on": {"fps": 12.0}}) == (30.0, None)
    fps, note = output_fps(None, {"trained_on": {"source": "shapes"}})  # an older export
    assert fps == SHAPES_FPS == 8 and "trained_on.fps" in note and "--fps" in note


def mp4_rate(path) -> float:
    with av.open(str(path)) as container:
        return float(container.streams.video[0].average_rate)


@pytest.fixture(scope="module")
def bundle_at_12_fps(tmp_path_factory):
    """The shipped bundle, its DiT export saying it was trained on 12 fps clips."""
    bundle = tmp_path_factory.mktemp("bundle")
    for name in ("dit", "vae"):
        shutil.copytree(SHIPPED / name, bundle / name)
    config = json.loads((bundle / "dit" / "config.json").read_text())
    config["trained_on"]["fps"] = 12.0  # not the Shapes rate, so a fallback would show
    (bundle / "dit" / "config.json").write_text(json.dumps(config))
    return bundle


def test_generate_writes_at_the_bundles_rate_with_progress(bundle_at_12_fps, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(bundle_at_12_fps), "--prompt", PROMPT, "--steps", "2"]
    cli.main(["generate", *argv, "--out", str(out)])
    printed = capsys.readouterr()
    (mp4,), (gif,), (record,) = (list(out.glob(f"*.{kind}")) for kind in ("mp4", "gif", "json"))
    assert mp4_rate(mp4) == 12.0
    assert Image.open(gif).info["duration"] == 80  # 1/12 s in whole centiseconds
    assert json.loads(record.read_text())["fps"] == 12.0
    assert f"wrote mp4: {mp4}" in printed.out
    for status in ("loading the checkpoint", "compiling the sampler", "sampling", "2/2"):
        assert status in printed.err, status
    assert "loading" not in printed.out  # progress stays off stdout
    assert "trained_on.fps" not in printed.err  # the bundle has its rate: no note


def test_fps_overrides_the_bundles_rate(bundle_at_12_fps, tmp_path):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(bundle_at_12_fps), "--prompt", PROMPT, "--steps", "1"]
    cli.main(["generate", *argv, "--out", str(out), "--fps", "20"])
    (mp4,) = out.glob("*.mp4")
    assert mp4_rate(mp4) == 20.0
