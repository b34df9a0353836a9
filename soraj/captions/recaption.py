"""`soraj recaption`: a new caption version of a dataset, written beside it, never in place.

The new version is a folder NEW with two files (videos are not copied: records point at the
input's):

- `captions.jsonl`: one JSON object per record, in input order. A Shapes TFDS input (kind
  "shapes_tfds", split train then validation) gives
  `{"index": i, "split": "train", "caption_original": ..., "caption_dense": ...,
  "caption_short": ..., "error": null}`, where record `index` of `split` is read with
  `soraj.data.tfds_shapes.load_shapes_dataset(dataset.json["input"], split)`. A video folder
  (kind "video_folder") gives `{"path": "<absolute path of the file>", "caption_original", ...}`
  with caption_original "" when the folder has no captions.jsonl. A record the backend failed on
  keeps caption_original as its dense and short caption, and its "error" says why.
- `dataset.json`: {"format": "soraj-recaption", "version", "kind", "input" (the dataset folder,
  absolute), "backend", "checkpoint", "endpoint", "model", "frames", "batch_size",
  "num_records", "num_failed", "failed": [{"record": line number from 0, "error"}],
  "captions_file", plus "splits": {split: count} for Shapes}. It is written last: a folder
  without it is unfinished.

While a run works, NEW/.in_progress holds its settings and captions.jsonl grows by whole,
flushed batches. A killed run started again with the same settings keeps the complete batches
and continues after them (a torn last line is cut away), so no record is lost or repeated.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import sys

import numpy as np
from tqdm import tqdm

from soraj.captions.recaption_inputs import open_input
from soraj.data.video_io import VideoReadError

BACKENDS = ("soraj", "openai")
BACKEND_MODES = ("dense", "short")  # the captions each record gains
CAPTIONS_FILE, DATASET_FILE, IN_PROGRESS = "captions.jsonl", "dataset.json", ".in_progress"
FORMAT_VERSION = 1
# Frames per clip, evenly spread from the first to the last: a few images for a VLM (Open-Sora
# sends 3-4); for the soraj captioner its own clip length, so a Shapes clip goes whole.
DEFAULT_FRAMES = {"openai": 4, "soraj": 9}


# ---- Backends: a batch of clips → (dense, short) per clip, or the exception it raised ----


class SorajBackend:
    def __init__(self, captioner):
        self.captioner = captioner

    def caption(self, videos: list[np.ndarray]) -> list[tuple[str, str]]:
        # One call per run of equal-sized clips; a Shapes batch is always one run.
        out: list[tuple[str, str]] = []
        start = 0
        while start < len(videos):
            end = start + 1
            while end < len(videos) and videos[end].shape == videos[start].shape:
                end += 1
            stack = np.stack(videos[start:end])  # (N, T, H, W, 3)
            dense = self.captioner.caption(stack, mode="dense")
            short = self.captioner.caption(stack, mode="short")
            out.extend(zip(dense, short, strict=True))
            start = end
        return out


class OpenAIBackend:
    def __init__(self, client, model: str):
        self.client, self.model = client, model

    def _one(self, video: np.ndarray):
        from soraj.captions.openai_backend import ReplyError, caption_frames

        try:
            return tuple(caption_frames(self.client, self.model, video, m) for m in BACKEND_MODES)
        except ReplyError as error:
            return error

    def caption(self, videos: list[np.ndarray]) -> list:
        # Concurrent requests let a server batch them; results keep the input order.
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(videos)) as pool:
            return list(pool.map(self._one, videos))


# ---- The output folder ----


def _complete_lines(path: pathlib.Path) -> list[bytes]:
    """Whole JSON lines of a captions file; a torn last line (killed mid-write) is dropped."""
    lines = path.read_bytes().split(b"\n")[:-1] if path.is_file() else []
    complete = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            break
        complete.append(line + b"\n")
    return complete


def prepare_output(out: pathlib.Path, settings: dict, source, batch_size: int) -> int:
    """Makes out ready for records and returns how many are already done there (a resume)."""
    marker, captions = out / IN_PROGRESS, out / CAPTIONS_FILE
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a new folder")
    if marker.is_file():
        saved = json.loads(marker.read_text())
        changed = sorted(
            k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k)
        )
        if changed:
            were = ", ".join(f"{k}={saved.get(k)!r}" for k in changed)
            raise ValueError(
                f"--out {out} holds an unfinished run with other settings ({were}); rerun with "
                "those or give a new --out"
            )
        lines = _complete_lines(captions)
        # Whole batches only, so every batch holds the same clips as an uninterrupted run.
        keep = len(lines) if len(lines) == len(source) else len(lines) // batch_size * batch_size
        for i, line in enumerate(lines[:keep]):
            record = json.loads(line)
            if {k: record.get(k) for k in source.key(i)} != source.key(i):
                raise ValueError(f"{captions}: line {i + 1} is not record {i} of --input")
        with open(captions, "wb") as f:
            f.write(b"".join(lines[:keep]))
        return keep
    if (out / DATASET_FILE).exists():
        raise ValueError(f"--out {out} holds a finished recaption; give a new folder")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not a recaption folder; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings, indent=1) + "\n")
    captions.write_bytes(b"")
    return 0


def _record_line(key: dict, original: str, result) -> str:
    if isinstance(result, Exception):
        dense = short = original
        error = f"{type(result).__name__}: {result}"
    else:
        (dense, short), error = result, None
    record = {**key, "caption_original": original, "caption_dense": dense}
    record.update(caption_short=short, error=error)
    return json.dumps(record, ensure_ascii=False) + "\n"


def recaption(source, backend, out, settings: dict, batch_size: int, frames: int) -> dict:
    """Writes (or finishes) the new version in out; returns its dataset.json content."""
    out = pathlib.Path(out)
    done = prepare_output(out, settings, source, batch_size)
    captions = out / CAPTIONS_FILE
    with (
        open(captions, "a", encoding="utf-8") as f,
        tqdm(total=len(source), initial=done, desc="recaption", unit="clip") as bar,
    ):
        for start in range(done, len(source), batch_size):
            indices = range(start, min(start + batch_size, len(source)))
            originals, videos, results = [], [], {}
            for i in indices:
                try:
                    original, video = source.read(i, frames)
                except VideoReadError as error:
                    original, video, results[i] = source.original(i), None, error
                originals.append(original)
                videos.append(video)
            todo = [i for i in indices if i not in results]
            answers = backend.caption([videos[i - start] for i in todo]) if todo else []
            results.update(zip(todo, answers, strict=True))
            lines = [_record_line(source.key(i), originals[i - start], results[i]) for i in indices]
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())  # a batch on disk is a batch a resume keeps
            bar.update(len(lines))
    records = [json.loads(line) for line in _complete_lines(captions)]
    failed = [{"record": i, "error": r["error"]} for i, r in enumerate(records) if r["error"]]
    info = {"format": "soraj-recaption", "version": FORMAT_VERSION, **settings}
    info.update(source.counts())
    info.update(num_records=len(records), num_failed=len(failed), failed=failed)
    info["captions_file"] = CAPTIONS_FILE
    partial = out / (DATASET_FILE + ".partial")
    partial.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    partial.replace(out / DATASET_FILE)  # dataset.json appears whole, then the run is done
    (out / IN_PROGRESS).unlink()
    return info


# ---- Command ----


def recaption_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soraj recaption",
        description="write a new caption version (dense + short) of a dataset into a new folder",
    )
    parser.add_argument("--input", required=True, help="Shapes TFDS dataset or video folder")
    parser.add_argument("--out", required=True, help="new folder (or an unfinished run's)")
    parser.add_argument("--backend", required=True, choices=BACKENDS)
    parser.add_argument("--checkpoint", help="captioner checkpoint (--backend soraj)")
    parser.add_argument(
        "--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1"
    )
    parser.add_argument("--model", help="model name the endpoint serves (--backend openai)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, help="frames per clip (openai: 4, soraj: 9)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="retries per request, backed off")
    return parser


def _checked(args, captioner=None) -> tuple:
    """(source, backend, settings): every check and load before the output folder is touched."""
    for name in ("batch_size", "frames", "timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.retries < 0:
        raise ValueError(f"--retries must be ≥ 0, got {args.retries}")
    out = pathlib.Path(args.out).absolute()
    source = open_input(args.input, skip=out)
    if out == pathlib.Path(source.path) or out == pathlib.Path(args.input).absolute():
        raise ValueError("--out must be a new folder: recaption never edits --input in place")
    frames = args.frames or DEFAULT_FRAMES[args.backend]
    settings = {"kind": source.kind, "input": source.path, "backend": args.backend}
    if args.backend == "soraj":
        if not args.checkpoint or not pathlib.Path(args.checkpoint).is_dir():
            raise ValueError(f"--backend soraj needs --checkpoint DIR, got {args.checkpoint!r}")
        if captioner is None:
            try:
                from soraj.captions.captioner import Captioner
            except ImportError as error:
                raise ValueError(f"the soraj captioner is not available: {error}") from None
            captioner = Captioner.load(args.checkpoint)
        backend = SorajBackend(captioner)
        settings.update(checkpoint=str(pathlib.Path(args.checkpoint).absolute()))
        settings.update(endpoint=None, model=None)
    else:
        if not args.endpoint or not args.model:
            raise ValueError("--backend openai needs --endpoint URL and --model NAME")
        from soraj.captions.openai_backend import check_endpoint, make_client

        check_endpoint(args.endpoint)
        backend = OpenAIBackend(make_client(args.endpoint, args.timeout, args.retries), args.model)
        settings.update(checkpoint=None, endpoint=args.endpoint, model=args.model)
    settings.update(frames=frames, batch_size=args.batch_size)
    return source, backend, settings


def run_recaption(argv: list[str], captioner=None) -> dict:
    """The command; a test may hand in a loaded captioner for --backend soraj."""
    args = recaption_parser().parse_args(argv)
    try:
        source, backend, settings = _checked(args, captioner)
        frames = settings["frames"]
        info = recaption(source, backend, args.out, settings, args.batch_size, frames)
    except ValueError as error:
        sys.exit(f"soraj recaption: error: {error}")
    out = pathlib.Path(args.out).absolute()
    print(f"recaptioned {info['num_records']} records, {info['num_failed']} failed")
    for failure in info["failed"][:10]:
        print(f"  failed record {failure['record']}: {failure['error']}")
    print(f"wrote {out / CAPTIONS_FILE} and {out / DATASET_FILE}")
    return info
