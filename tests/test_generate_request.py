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
from soraj.exports import BundleError
from soraj.generate_request import GenerateRequest, check_request, output_fps

SHIPPED = Path("experiments/shapes/checkpoint")
CLASSES = ["blue_things", "red_things", "still_images"]
PROMPT = "A large red circle moves to the right. The background is black."
VAE_FIELDS = {
    "kind": "vae",
    "vae_config": {"temporal_downsample": [True, True], "spatial_downsample": [True, True]},
}
# A VAE with 2×2 pixel patches and one spatial halving: spatial factor 2 · 2 = 4, as "tiny64".
PATCHED_VAE_FIELDS = {
    "kind": "vae",
    "vae_config": {
        "temporal_downsample": [True, True],
        "spatial_downsample": [True, False],
        "pixel_patch": 2,
    },
}


def configs_only_bundle(root: Path, dit_fields: dict, vae_fields: dict = VAE_FIELDS) -> Path:
    """A bundle with configs but empty params folders: loading its weights would fail."""
    for name, fields in (("vae", vae_fields), ("dit", {"kind": "dit", **dit_fields})):
        (root / name / "params").mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps(fields))
    return root


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(generate.Generator, "load", refuse)


TRAINED_ON = {"source": "shapes", "fps": 8.0}


@pytest.fixture
def class_bundle(tmp_path, no_weights):
    dit = {
        "dit_config": {"patch_size": [1, 2, 2], "conditioning": "class"},
        "classes": CLASSES,
        "trained_on": TRAINED_ON,
    }
    return configs_only_bundle(tmp_path / "classes", dit)


@pytest.fixture
def text_bundle(tmp_path, no_weights):
    dit = {"dit_config": {"patch_size": [1, 2, 2]}, "trained_on": TRAINED_ON}
    return configs_only_bundle(tmp_path / "text", dit)


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


# ---- Geometry -------------------------------------------------------------------------------


def test_the_vaes_pixel_patch_counts_in_the_allowed_sizes(tmp_path, no_weights):
    """Spatial factor pixel_patch · 2^(halvings) = 2 · 2 = 4, times the DiT patch 2: sides are
    multiples of 8. 12 is a multiple of 2 · 2 (the factor without the pixel patch) but not 8."""
    dit = {"dit_config": {"patch_size": [1, 2, 2]}, "trained_on": TRAINED_ON}
    bundle = configs_only_bundle(tmp_path / "patched", dit, PATCHED_VAE_FIELDS)
    argv = ["--checkpoint", str(bundle), "--prompt", PROMPT, "--height", "12"]
    assert generate_error(argv) == (
        "soraj generate: error: --height must be a positive multiple of 8 (VAE factor 4 × "
        "patch 2), e.g. 8, 16, 32; got 12"
    )
    geometry = generate.BundleGeometry.read(bundle)
    assert (geometry.temporal_factor, geometry.spatial_factor) == (4, 4)
    request = GenerateRequest(PROMPT, str(bundle), height=16, width=24, out=str(tmp_path / "o"))
    assert check_request(request).mode is None  # multiples of 8 pass


def test_a_vae_config_this_code_cannot_build_is_one_line(tmp_path, no_weights):
    fields = {"kind": "vae", "vae_config": {**PATCHED_VAE_FIELDS["vae_config"], "pixel_patch": 3}}
    bundle = configs_only_bundle(
        tmp_path / "bad", {"dit_config": {"patch_size": [1, 2, 2]}}, fields
    )
    message = generate_error(["--checkpoint", str(bundle), "--prompt", PROMPT])
    assert message.startswith(f"soraj generate: error: {bundle / 'vae' / 'config.json'} ")
    assert "pixel_patch must be one of (1, 2, 4), got 3" in message


# ---- Guidance -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--guidance", "--visual-guidance"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_guidance_must_be_finite(text_bundle, flag, value):
    argv = ["--checkpoint", str(text_bundle), "--prompt", PROMPT, f"{flag}={value}"]
    assert generate_error(argv) == (
        f"soraj generate: error: {flag} must be a finite number (e.g. 1, 4, 7.5), "
        f"got {float(value)}"
    )


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_strength_must_be_a_number_in_range(text_bundle, tmp_path, value):
    edit = tmp_path / "edit.mp4"
    edit.write_bytes(b"")  # never read: the flags are refused first
    argv = ["--checkpoint", str(text_bundle), "--prompt", PROMPT, "--edit", str(edit)]
    assert generate_error([*argv, "--strength", value]) == (
        f"soraj generate: error: --strength must be a number in (0, 1], got {float(value)}"
    )


# ---- Frame rate -----------------------------------------------------------------------------


@pytest.mark.parametrize("fps", ["0", "-2", "nan", "inf"])
def test_fps_must_be_a_positive_number(text_bundle, fps):
    argv = ["--checkpoint", str(text_bundle), "--prompt", PROMPT, "--fps", fps]
    assert "--fps must be a positive number of frames per second" in generate_error(argv)


DIT_DIR = Path("bundle/dit")
DIT_CONFIG = DIT_DIR / "config.json"


def test_the_frame_rate_is_the_training_datas():
    assert output_fps(None, {"trained_on": {"fps": 12.0}}, DIT_DIR) == (12.0, None)
    assert output_fps(None, {"trained_on": {"fps": 25, "source": "video_folder"}}, DIT_DIR) == (
        25.0,
        None,
    )
    assert output_fps(30.0, {"trained_on": {"fps": 12.0}}, DIT_DIR) == (30.0, None)


@pytest.mark.parametrize("source", ["shapes", "shapes_canvases", "shapes_tfds"])
def test_an_older_shapes_export_plays_at_the_shapes_rate_with_a_note(source):
    fps, note = output_fps(None, {"trained_on": {"source": source}}, DIT_DIR)
    assert fps == SHAPES_FPS == 8
    assert f"{DIT_CONFIG} has no trained_on.fps" in note and repr(source) in note
    assert "--fps" in note


def recaptioned(tmp_path, kind: str) -> dict:
    """trained_on of a DiT trained on a `soraj recaption` folder of a `kind` dataset."""
    folder = tmp_path / kind
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({"kind": kind, "input": "elsewhere"}))
    return {"source": "recaptioned", "root": str(folder)}


def test_an_older_recaptioned_export_plays_at_the_shapes_rate_only_if_of_shapes(tmp_path):
    fps, note = output_fps(None, {"trained_on": recaptioned(tmp_path, "shapes_tfds")}, DIT_DIR)
    assert fps == SHAPES_FPS and "'recaptioned'" in note
    for trained_on in (
        recaptioned(tmp_path, "video_folder"),
        {"source": "recaptioned", "root": str(tmp_path / "not_here")},  # on another machine
    ):
        with pytest.raises(BundleError, match="pass --fps") as error:
            output_fps(None, {"trained_on": trained_on}, DIT_DIR)
        info = f"{trained_on['root']}/dataset.json"
        assert f"whose {info} does not name a Shapes dataset here" in str(error.value)


@pytest.mark.parametrize(
    "trained_on",
    [{"source": "video_folder"}, {"source": "class_folder"}, {}, {"source": None}],
)
def test_an_export_of_other_footage_without_a_rate_needs_fps(trained_on):
    with pytest.raises(BundleError) as error:
        output_fps(None, {"trained_on": trained_on}, DIT_DIR)
    message = str(error.value)
    assert message.startswith(f"{DIT_CONFIG} records no training frame rate")
    assert message.endswith("pass --fps (the frame rate of the clips it was trained on)")
    assert "\n" not in message
    assert output_fps(24.0, {"trained_on": trained_on}, DIT_DIR) == (24.0, None)


@pytest.mark.parametrize("stored", [0, -8, float("nan"), float("inf"), "8", True, None])
def test_a_stored_rate_that_is_not_a_positive_number_is_refused(stored):
    trained_on = {"source": "shapes", "fps": stored}
    if stored is None:  # JSON null: as if missing, so the Shapes rate with a note
        assert output_fps(None, {"trained_on": trained_on}, DIT_DIR)[0] == SHAPES_FPS
        return
    with pytest.raises(BundleError) as error:
        output_fps(None, {"trained_on": trained_on}, DIT_DIR)
    assert str(error.value).startswith(f"{DIT_CONFIG} gives trained_on.fps = {stored!r}, not a")
    assert str(error.value).endswith("or pass --fps")
    assert output_fps(12.0, {"trained_on": trained_on}, DIT_DIR) == (12.0, None)


@pytest.mark.parametrize("stored", ["0", "-1", "NaN", "Infinity"])
def test_generate_refuses_a_bundle_with_a_bad_rate_in_one_line(tmp_path, no_weights, stored):
    dit = {"dit_config": {"patch_size": [1, 2, 2]}, "trained_on": {"source": "shapes"}}
    bundle = configs_only_bundle(tmp_path / "bundle", dit)
    config = bundle / "dit" / "config.json"
    # json.dumps cannot write NaN as the token a hand-edited file would hold: write it raw.
    config.write_text(config.read_text().replace('"source": "shapes"', f'"fps": {stored}'))
    message = generate_error(["--checkpoint", str(bundle), "--prompt", PROMPT])
    assert message.startswith(f"soraj generate: error: {config} gives trained_on.fps = ")
    assert message.endswith("or pass --fps") and "\n" not in message


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


# ---- The clip size ------------------------------------------------------------------------


def test_a_left_out_size_is_the_size_the_model_was_trained_on(tmp_path, no_weights):
    trained = {**TRAINED_ON, "num_frames": 17, "height": 64, "width": 48}
    dit = {"dit_config": {"patch_size": [1, 2, 2]}, "trained_on": trained}
    bundle = configs_only_bundle(tmp_path / "b", dit, PATCHED_VAE_FIELDS)
    checked = check_request(GenerateRequest(prompt=PROMPT, checkpoint=str(bundle)))
    assert (checked.request.frames, checked.request.height, checked.request.width) == (17, 64, 48)
    given = GenerateRequest(prompt=PROMPT, checkpoint=str(bundle), height=32, width=32)
    checked = check_request(given)
    assert (checked.request.frames, checked.request.height, checked.request.width) == (17, 32, 32)


def test_a_bundle_that_records_no_size_falls_back_to_nine_by_32_by_32(text_bundle):
    checked = check_request(GenerateRequest(prompt=PROMPT, checkpoint=str(text_bundle)))
    assert (checked.request.frames, checked.request.height, checked.request.width) == (9, 32, 32)
