"""`soraj recaption`: new versions of Shapes and video-folder datasets, resume after a real kill,
the openai backend's failed records, and bad input."""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import fake_openai_server
import numpy as np
import pytest
from fake_openai_server import Answer, request_images
from PIL import Image

from soraj.captions.recaption import run_recaption
from soraj.captions.recaption_inputs import read_spread_frames
from soraj.data.tfds_shapes import load_shapes_dataset, make_shapes_dataset
from soraj.data.video_io import write_mp4

fake_openai = fake_openai_server.fake_openai  # the fixture
REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VALIDATION = 6, 2


class FakeCaptioner:
    """Captioner.caption's interface; a caption names the clip's mean, so it is checkable."""

    def __init__(self):
        self.calls = []

    def caption(self, videos, mode="dense", beam=1):
        self.calls.append((videos.shape, mode))
        return [f"{mode} {video.mean():.4f}" for video in videos]


def tree_digest(root: pathlib.Path) -> str:
    """A hash of every file's path and bytes under root: equal means untouched."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def read_out(out: pathlib.Path):
    lines = (out / "captions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], json.loads((out / "dataset.json").read_text())


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    make_shapes_dataset(root, NUM_TRAIN, 3, 16, 16, seed=0, num_validation=NUM_VALIDATION)
    return root


@pytest.fixture
def folder(tmp_path):
    """Five stills of brightness 0, 40, ..., 160 and an unlisted one, with captions.jsonl."""
    root = tmp_path / "videos"
    root.mkdir()
    lines = []
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"clip{i}.png")
        lines.append(json.dumps({"path": f"clip{i}.png", "caption": f"photo {i}"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def brightness_reply(body: dict) -> Answer:
    """A deterministic caption from the frames the request carries, and the mode it asked."""
    mode = "short" if "one-sentence" in body["messages"][0]["content"][0]["text"] else "dense"
    images = request_images(body)
    return Answer(text=f"The video shows {mode} {len(images)} frames of {images[0].mean():.0f}.")


# ---- New versions ----


def test_shapes_soraj_backend_writes_a_new_version(shapes_dir, tmp_path, capsys):
    before, captioner, out = tree_digest(shapes_dir), FakeCaptioner(), tmp_path / "new"
    argv = ["--input", str(shapes_dir), "--out", str(out), "--backend", "soraj"]
    run_recaption([*argv, "--checkpoint", str(tmp_path), "--batch-size", "3"], captioner)
    records, info = read_out(out)
    assert tree_digest(shapes_dir) == before  # the input is never edited
    assert sorted(p.name for p in out.iterdir()) == ["captions.jsonl", "dataset.json"]
    keys = [(r["split"], r["index"]) for r in records]
    assert keys == [("train", i) for i in range(NUM_TRAIN)] + [
        ("validation", i) for i in range(NUM_VALIDATION)
    ]
    for record in records:
        clip = load_shapes_dataset(shapes_dir, record["split"])[record["index"]]
        assert record["caption_original"] == clip.get("caption_original", clip["caption"])
        assert record["caption_dense"] == f"dense {clip['video'].mean():.4f}"
        assert record["caption_short"] == f"short {clip['video'].mean():.4f}"
        assert record["error"] is None
    # Batches of 3 whole clips, dense and short each; the last batch is the remainder.
    shapes = [shape for shape, _ in captioner.calls]
    assert shapes == [(3, 3, 16, 16, 3)] * 4 + [(2, 3, 16, 16, 3)] * 2
    assert info["kind"] == "shapes_tfds" and info["backend"] == "soraj"
    assert info["splits"] == {"train": NUM_TRAIN, "validation": NUM_VALIDATION}
    assert info["num_records"] == 8 and info["num_failed"] == 0
    assert load_shapes_dataset(info["input"], "train") is not None
    assert f"wrote {out / 'captions.jsonl'}" in capsys.readouterr().out
    # A finished version is never overwritten.
    with pytest.raises(SystemExit, match="holds a finished recaption"):
        run_recaption([*argv, "--checkpoint", str(tmp_path)], captioner)


def test_the_dit_reader_reads_a_new_version(shapes_dir, tmp_path):
    versions = pytest.importorskip("soraj.data.caption_versions")
    out = tmp_path / "new"
    argv = ["--input", str(shapes_dir), "--out", str(out), "--backend", "soraj"]
    run_recaption([*argv, "--checkpoint", str(tmp_path)], FakeCaptioner())
    source = versions.RecaptionedSource(out, max_frames=3, split="validation")
    assert len(source) == NUM_VALIDATION
    item = source[1]
    assert item["caption"] == f"dense {item['video'].mean():.4f}"


def test_video_folder_with_and_without_captions(folder, tmp_path):
    out = tmp_path / "with"
    run_recaption(
        ["--input", str(folder), "--out", str(out), "--backend", "soraj"]
        + ["--checkpoint", str(tmp_path), "--frames", "2"],
        FakeCaptioner(),
    )
    records, info = read_out(out)
    assert [r["path"] for r in records] == [str(folder / f"clip{i}.png") for i in range(5)]
    assert [r["caption_original"] for r in records] == [f"photo {i}" for i in range(5)]
    assert records[2]["caption_dense"] == "dense 80.0000" and info["kind"] == "video_folder"
    (folder / "captions.jsonl").unlink()
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "without"
    run_recaption(
        ["--input", str(folder), "--out", str(out), "--backend", "soraj"]
        + ["--checkpoint", str(tmp_path)],
        FakeCaptioner(),
    )
    records, _ = read_out(out)
    assert [pathlib.Path(r["path"]).name for r in records] == [f"clip{i}.png" for i in range(5)]
    assert {r["caption_original"] for r in records} == {""}


def test_spread_frames_reach_first_and_last_frame(tmp_path):
    video = np.repeat(np.arange(0, 250, 25, dtype=np.uint8), 16 * 16 * 3).reshape(10, 16, 16, 3)
    frames = read_spread_frames(pathlib.Path(write_mp4(tmp_path / "ramp.mp4", video, 10)), 4)
    assert frames.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [0, 75, 150, 225], atol=4)


# ---- The openai backend ----


def test_openai_backend_keeps_the_original_on_failed_records(folder, tmp_path, fake_openai):
    def respond(body):
        brightness = round(request_images(body)[0].mean())
        kinds = {40: Answer("error500"), 80: Answer("malformed"), 120: Answer("slow", delay_s=3)}
        return kinds.get(brightness) or brightness_reply(body)

    fake_openai.respond = respond
    out = tmp_path / "new"
    info = run_recaption(
        ["--input", str(folder), "--out", str(out), "--backend", "openai"]
        + ["--endpoint", fake_openai.url, "--model", "vlm", "--frames", "3"]
        + ["--timeout", "0.5", "--retries", "0", "--batch-size", "5"]
    )
    records, saved = read_out(out)
    assert saved == info and info["num_failed"] == 3
    assert [f["record"] for f in info["failed"]] == [1, 2, 3]
    for i in (1, 2, 3):
        assert records[i]["caption_dense"] == records[i]["caption_short"] == f"photo {i}"
    assert "InternalServerError" in records[1]["error"] and "malformed" in records[2]["error"]
    assert "Timeout" in records[3]["error"]
    # A still gives one distinct frame; the preamble is gone.
    assert records[4]["caption_dense"] == "Dense 1 frames of 160."
    assert records[4]["caption_short"] == "Short 1 frames of 160."


def test_a_killed_run_resumes_without_losing_or_repeating_records(shapes_dir, tmp_path):
    # Answers slow enough (0.3 s, two per record, two records at a time) that a kill lands
    # mid-run, yet well inside the client's timeout.
    server = fake_openai_server.FakeOpenAIServer(
        respond=lambda body: Answer("slow", text=brightness_reply(body).text, delay_s=0.3)
    ).start()
    try:
        argv = ["-m", "soraj", "recaption", "--input", str(shapes_dir), "--backend", "openai"]
        argv += ["--endpoint", server.url, "--model", "vlm", "--batch-size", "2", "--frames", "2"]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}

        def start(out):
            return subprocess.Popen(
                [sys.executable, *argv, "--out", str(out)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )

        reference = start(tmp_path / "reference")
        assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
        out = tmp_path / "killed"
        run = start(out)
        deadline = time.time() + 300
        while time.time() < deadline:
            captions = out / "captions.jsonl"
            if captions.exists() and captions.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert (out / ".in_progress").exists() and not (out / "dataset.json").exists()
        written = (out / "captions.jsonl").read_bytes().count(b"\n")
        assert 3 <= written < NUM_TRAIN + NUM_VALIDATION
        kept = written // 2 * 2  # whole batches of 2
        # A torn line, as a kill in the middle of a write leaves it.
        with open(out / "captions.jsonl", "ab") as f:
            f.write(b'{"index": 5, "split": "tr')
        asked = len(server.requests)
        resumed = start(out)
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
        # Only the records after the kept batches are captioned again, dense and short each.
        assert len(server.requests) - asked == (NUM_TRAIN + NUM_VALIDATION - kept) * 2
    finally:
        server.stop()
    assert (out / "captions.jsonl").read_bytes() == (
        tmp_path / "reference" / "captions.jsonl"
    ).read_bytes()
    records, info = read_out(out)
    _, reference_info = read_out(tmp_path / "reference")
    assert info == reference_info and len(records) == NUM_TRAIN + NUM_VALIDATION
    assert not (out / ".in_progress").exists()


def test_other_settings_never_resume_into_an_unfinished_run(folder, tmp_path):
    class Interrupted(FakeCaptioner):
        def caption(self, videos, mode="dense", beam=1):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().caption(videos, mode, beam)

    out = tmp_path / "new"
    argv = ["--input", str(folder), "--out", str(out), "--backend", "soraj"]
    argv += ["--checkpoint", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        run_recaption([*argv, "--batch-size", "2"], Interrupted())
    assert len((out / "captions.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit, match="unfinished run with other settings .*batch_size=2"):
        run_recaption([*argv, "--batch-size", "3"], FakeCaptioner())
    captioner = FakeCaptioner()
    run_recaption([*argv, "--batch-size", "2"], captioner)
    assert len(captioner.calls) == 4  # the two batches left, dense and short
    assert len(read_out(out)[0]) == 5


# ---- Bad input ----


def test_bad_input_fails_in_one_line_and_writes_nothing(folder, tmp_path, fake_openai):
    out = tmp_path / "new"
    empty = tmp_path / "empty"
    empty.mkdir()
    soraj_argv = ["--out", str(out), "--backend", "soraj", "--checkpoint", str(tmp_path)]
    cases = [
        (["--input", str(empty), *soraj_argv], "no dataset under"),
        (["--input", str(tmp_path / "missing"), *soraj_argv], "is not a folder"),
        (["--input", str(folder), "--out", str(out), "--backend", "soraj"], "needs --checkpoint"),
        (["--input", str(folder), *soraj_argv, "--batch-size", "0"], "--batch-size must be"),
        (
            ["--input", str(folder), "--out", str(folder), "--backend", "soraj"]
            + ["--checkpoint", str(tmp_path)],
            "never edits --input",
        ),
    ]
    fake_openai.stop()  # nothing listens at its port any more
    cases.append(
        (
            ["--input", str(folder), "--out", str(out), "--backend", "openai"]
            + ["--endpoint", fake_openai.url, "--model", "vlm"],
            "refuses connections",
        )
    )
    listed_missing = tmp_path / "listed_missing"
    listed_missing.mkdir()
    (listed_missing / "captions.jsonl").write_text('{"path": "gone.png", "caption": "x"}\n')
    cases.append((["--input", str(listed_missing), *soraj_argv], "lists 1 missing files"))
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message) as error:
            run_recaption(argv, FakeCaptioner())
        assert str(error.value).startswith("soraj recaption: error: ")
        assert "\n" not in str(error.value)
        assert not out.exists(), message


def test_the_real_captioner_recaptions_deterministically(shapes_dir, tmp_path):
    """A random-weight tiny captioner through Captioner.load: the interface, not the accuracy."""
    import jax

    from soraj.captions.captioner import CaptionerConfig, export_captioner, init_captioner
    from soraj.captions.vocab import CaptionVocab

    config = CaptionerConfig(
        frames=3, height=16, width=16, tubelet=(3, 8, 8), model_width=32, encoder_depth=1,
        decoder_depth=1, num_heads=2, max_length=12,
    )  # fmt: skip
    clips = load_shapes_dataset(shapes_dir, "train")
    vocab = CaptionVocab.from_captions(clips[i]["caption"] for i in range(NUM_TRAIN))
    config = CaptionerConfig(**{**config.__dict__, "vocab_size": vocab.size})
    params = init_captioner(config, jax.random.key(0))
    checkpoint = export_captioner(tmp_path / "captioner", params, config, vocab, {})
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        run_recaption(
            ["--input", str(shapes_dir), "--out", str(out), "--backend", "soraj"]
            + ["--checkpoint", str(checkpoint), "--batch-size", "3", "--frames", "3"]
        )
    (first, info), (second, _) = read_out(outs[0]), read_out(outs[1])
    assert len(first) == NUM_TRAIN + NUM_VALIDATION and info["num_failed"] == 0
    assert all(isinstance(r["caption_dense"], str) for r in first)
    # A rerun writes the same captions.
    assert [r["caption_dense"] for r in first] == [r["caption_dense"] for r in second]
