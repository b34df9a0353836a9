"""Prompting modes: each mode's window plan, the CLI's refusals before any weights load, and
every mode end to end on the shipped checkpoint with its given latents kept exactly."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from soraj.cli import generate_parser
from soraj.data.video_io import write_mp4
from soraj.generate import Generator
from soraj.generate_modes import prepare_mode, run_mode
from soraj.generate_request import GenerateRequest, check_request
from soraj.long_generation import LongPlan, generate_long
from soraj.prompting import PlanBuilder, fit_frames, latent_of_pixel

CHECKPOINT = "experiments/shapes/checkpoint"
FT = 4
PROMPT = "A large red circle moves right. The background is black."


# ---- Plans, with a stand-in encoder ----


def _fake_encode(clip):
    """Latent frame j of a clip is the mean of its pixel frames of latent j (frame 0 alone),
    tagged with the clip's length so a re-encoded clip is told apart from a whole one."""
    frames = [clip[:1]] + [
        clip[1 + FT * (j - 1) : 1 + FT * j] for j in range(1, len(clip) // FT + 1)
    ]
    means = np.stack([f.astype(np.float32).mean(axis=(0, 1, 2)) for f in frames])  # (T', 3)
    return np.broadcast_to(
        (means + 1000 * len(clip))[:, None, None, :], (len(frames), 2, 2, 3)
    ).copy()


def _clip(frames, offset=0):
    return (offset + np.arange(frames)[:, None, None, None] * np.ones((1, 8, 8, 3))).astype(
        np.uint8
    )


BUILDER = PlanBuilder(_fake_encode, (3, 2, 2, 3), FT, 9)


def test_extend_forward_reencodes_the_tail_at_the_window_start():
    video = _clip(13)
    plan = BUILDER.extend_forward(video, 5)
    np.testing.assert_array_equal(plan.level, [0, 0, 1])
    np.testing.assert_array_equal(plan.reference[:2], _fake_encode(video[8:]))  # its own clip
    out = plan.assemble(_clip(9, offset=100))
    assert len(out) == 8 + 9 and np.array_equal(out[:8], video[:8])


def test_extend_backward_gives_the_videos_own_latents_from_one_on():
    video = _clip(13)
    plan = BUILDER.extend_backward(video, 5)
    np.testing.assert_array_equal(plan.level, [1, 1, 0])
    # latent 1 of the video encoded from its start (with its past), not a clip of its own
    np.testing.assert_array_equal(plan.reference[2], _fake_encode(video[:5])[1])
    out = plan.assemble(_clip(9, offset=100))
    assert len(out) == 9 + 8 and np.array_equal(out[9:], video[5:])


def test_connect_and_loop_give_both_ends():
    first, second = _clip(9), _clip(9, offset=50)
    plan = BUILDER.connect(first, second)
    np.testing.assert_array_equal(plan.level, [0, 1, 0])
    np.testing.assert_array_equal(plan.reference[0], _fake_encode(first[8:])[0])
    np.testing.assert_array_equal(plan.reference[2], _fake_encode(second[:5])[1])
    out = plan.assemble(_clip(9, offset=100))
    assert len(out) == 8 + 9 + 4 and np.array_equal(out[-4:], second[5:])

    latents = _fake_encode(first)
    bridge = BUILDER.loop_bridge(first, latents)
    np.testing.assert_array_equal(bridge.reference[2], latents[1])  # the video's own latent 1
    cycle = bridge.assemble(_clip(9, offset=100))
    # The video's frames 5..7, then the bridge from its frame 8 round to its frames 1..4.
    assert len(cycle) == 3 + 9 and np.array_equal(cycle[:3], first[5:8])


def test_images_land_on_their_latent_frame_and_edit_sets_the_strength():
    image = _clip(1, offset=7)[0]
    plan = BUILDER.images([(image, 0), (image, 6)])
    assert latent_of_pixel(6, FT) == 2 and latent_of_pixel(4, FT) == 1
    np.testing.assert_array_equal(plan.level, [0, 1, 0])
    still = np.repeat(image[None], 9, axis=0)
    np.testing.assert_array_equal(plan.reference[2], _fake_encode(still)[2])
    with pytest.raises(ValueError, match="two images fall on latent frame 1"):
        BUILDER.images([(image, 1), (image, 3)])
    edit = BUILDER.edit(_clip(12), 0.4)
    np.testing.assert_allclose(edit.level, 0.4)
    assert not edit.visual.any()


def test_fit_frames_crops_the_centre_to_the_aspect_then_resizes():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, size=(2, 16, 40, 3), dtype=np.uint8)
    fitted, note = fit_frames(wide, 32, 32)
    assert fitted.shape == (2, 32, 32, 3) and "centre-cropped to 16×16" in note
    expected = Image.fromarray(wide[1][:, 12:28]).resize((32, 32), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(fitted[1], np.asarray(expected))
    same, note = fit_frames(wide[:, :, :16], 16, 16)
    assert same is not None and note.endswith("used as it is")


# ---- The CLI refuses before any weights load ----


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    video = rng.integers(0, 255, size=(9, 32, 32, 3), dtype=np.uint8)
    short = video[:3]
    paths = {
        "video": write_mp4(folder / "video.mp4", video, 8),
        "short": write_mp4(folder / "short.mp4", short, 8),
        "image": str(folder / "image.png"),
    }
    Image.fromarray(video[0]).save(paths["image"])
    return paths


def _check(argv):
    args = generate_parser().parse_args(
        ["--checkpoint", CHECKPOINT, "--prompt", PROMPT, "--frames", "9", *argv]
    )
    return check_request(GenerateRequest.from_args(args)).mode


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--loop", "--image", "{image}@last"], "--loop with an image at the last frame"),
        (["--edit", "{video}", "--strength", "0"], "--strength must be in \\(0, 1\\], got 0.0"),
        (["--image", "missing.png"], "--image missing.png does not exist"),
        (["--video", "{short}", "--extend", "forward"], "--video has 3 frames, fewer than"),
        (["--video", "{video}", "--extend", "forward", "--given-frames", "4"], "1 \\+ 4·k"),
        (["--video", "{video}", "--extend", "backward", "--given-frames", "1"], "k from 1 to 2"),
        (["--image", "{image}", "--connect", "{video}", "{video}"], "cannot be combined"),
        (["--image", "{image}@9"], "FRAME must be in \\[0, 8\\] or 'last'"),
        (["--video", "{video}"], "needs both --video PATH and --extend"),
        (["--given-frames", "5"], "--given-frames is for --extend and --seconds"),
        (["--seconds", "0"], "--seconds must be a positive number of seconds, got 0.0"),
        (["--seconds", "nan"], "--seconds must be a positive number"),
        (["--seconds", "1"], "--seconds 1 at 8 fps is 8 frames, fewer than one window of"),
        (["--seconds", "3", "--loop"], "--seconds works from text or from --image, not with"),
        (["--seconds", "3", "--edit", "{video}", "--strength", "0.5"], "not with --edit"),
        (["--seconds", "3", "--given-frames", "9"], "k from 0 to 1 for a forward extension"),
    ],
)
def test_impossible_requests_are_refused_by_name(inputs, argv, message):
    with pytest.raises(ValueError, match=message):
        _check([a.format(**inputs) for a in argv])


def test_frames_one_cannot_loop_and_the_command_exits_before_loading(inputs):
    with pytest.raises(ValueError, match="--frames 1 is an image"):
        prepare_mode(
            argparse.Namespace(
                frames=1,
                height=32,
                width=32,
                image=[],
                video=None,
                extend=None,
                connect=None,
                edit=None,
                strength=None,
                loop=True,
                visual_guidance=1.0,
                given_frames=None,
            ),
            FT,
            1,
        )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "soraj",
            "generate",
            "--checkpoint",
            "no/such/bundle",
            "--prompt",
            PROMPT,
            "--loop",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "--checkpoint no/such/bundle does not exist" in done.stderr


# ---- Every mode end to end ----


@pytest.fixture(scope="module")
def generator():
    return Generator.load(CHECKPOINT)


@pytest.mark.parametrize(
    "argv, frames_out",
    [
        (["--image", "{image}"], 9),
        (["--image", "{image}@5", "--visual-guidance", "2"], 9),
        (["--video", "{video}", "--extend", "forward"], 4 + 9),
        (["--video", "{video}", "--extend", "backward"], 9 + 4),
        (["--connect", "{video}", "{video}"], 8 + 9 + 4),
        (["--loop"], 3 + 9),
        (["--edit", "{video}", "--strength", "0.6"], 9),
        # 3 s at the Shapes 8 fps: 24 frames, a window of 9 then four extensions of 4 new
        # frames after 5 given (the last trimmed to fit).
        (["--seconds", "3"], 24),
        (["--seconds", "3", "--image", "{image}"], 24),
    ],
)
def test_every_mode_runs_and_keeps_its_given_latents_exactly(generator, inputs, argv, frames_out):
    request = _check([a.format(**inputs) for a in argv])
    visual = float(argv[argv.index("--visual-guidance") + 1]) if "--visual-guidance" in argv else 1
    video, info = run_mode(generator, request, PROMPT, (9, 32, 32), 0, 3, 4.0, visual, 8.0)
    assert video.shape == (frames_out, 32, 32, 3) and video.dtype == np.uint8
    assert info["given_latent_max_error"] == 0.0
    assert info["mode"] == request.mode


def test_long_video_keeps_each_window_and_adds_only_its_new_frames():
    """generate_long with a stand-in sampler whose window i is filled with i: 24 frames from
    windows of 9 with 5 given are window 0's 9 frames, then 4 new frames of windows 1 to 3 and
    the first 3 of window 4 (hand-counted)."""
    shape = (9, 2, 2, 3)

    class Builder:
        given_tails = []

        def extend_forward(self, video, given):
            self.given_tails.append(video.copy())
            return PlanBuilder(lambda clip: np.zeros((3, 1, 1, 1)), (3, 1, 1, 1), 4, 9).text()

    def sample(plan, seed):
        return plan.reference, np.full(shape, seed, np.uint8)

    first = PlanBuilder(lambda clip: np.zeros((3, 1, 1, 1)), (3, 1, 1, 1), 4, 9).text()
    plan = LongPlan(total_frames=24, window=9, given=5)
    builder = Builder()
    video, error = generate_long(sample, builder, first, plan, seed=0)
    want = [0] * 9 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 3
    assert video[:, 0, 0, 0].tolist() == want and error == 0.0
    assert plan.num_windows == 5 and plan.seams == [9, 13, 17, 21]
    # Each extension is given the last 5 frames of the video so far.
    assert [t[:, 0, 0, 0].tolist() for t in builder.given_tails[:2]] == [[0] * 5, [0, 1, 1, 1, 1]]
