"""Builds the real-footage VAE datasets from files that packages ship: offline, deterministic.

    .venv/bin/python experiments/vae_real/prepare_data.py [--vtest PATH] [--out DIR]

Sources: `demo.mp4` of iscc-samples (a live music session, 176×144, 24 fps, letterboxed 16:9),
scikit-image's bundled stills, and `vtest.avi` of Debian's opencv-doc (pedestrians, 768×576,
10 fps; fetched with `apt-get download opencv-doc` unless --vtest names it). Writes three
video-folder datasets (captions.jsonl + media, read by soraj.data.video_folder.VideoFolderSource):

    DIR/train/           33-frame clips from the first ~80 % of demo.mp4, and the stills as PNG
    DIR/heldout_frames/  33-frame clips from the rest of demo.mp4: shots never trained on
    DIR/unseen_clip/     33-frame clips of vtest.avi at 192×144: footage never trained on

and DIR/manifest.json with every file's frames, size and source range. Each run deletes and
rewrites these three folders, so running it twice gives the same bytes.
"""

import argparse
import hashlib
import json
import pathlib
import shutil
import subprocess
import tempfile

import iscc_samples
import numpy as np
import skimage.data
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from soraj.data.video_folder import center_crop_resize
from soraj.data.video_io import read_video, write_mp4
from soraj.eval.metrics import psnr

DEFAULT_OUT = pathlib.Path(__file__).parent / "data"
DEMO_PATH = pathlib.Path(iscc_samples.__file__).parent / "files" / "video" / "demo.mp4"
VTEST_IN_DEB = "usr/share/doc/opencv-doc/examples/data/vtest.avi"

# 33 = 1 + 4·8 = 1 + 8·4: a whole number of latent frames for every temporal factor 1, 2, 4, 8.
CLIP_FRAMES = 33
# Training windows start every 16 frames, so a trainer that reads only the first 17 frames of
# each clip still sees every frame; one that reads all 33 sees each frame in two clips.
TRAIN_STRIDE = 16
TRAIN_FRACTION = 0.8
# A shot cut is a spike in the mean |difference| (of 255) between neighbouring frames: above
# 15 and above 4× the median of the 8 differences around it. Fast motion (a drummer's hands)
# raises the differences around it too; a cut stands alone.
CUT_MIN_CHANGE = 15.0
CUT_RATIO = 4.0
# demo.mp4 is 16:9 letterboxed in 176×144: rows 24..119 hold picture on every frame after the
# title. Keeping the black bars would teach the VAE (and reward it in PSNR for) flat black.
DEMO_ROWS = slice(24, 120)
STILL_MAX_SIDE = 256  # about demo.mp4's scale, so stills and frames show detail at one size
UNSEEN_HEIGHT, UNSEEN_WIDTH = 144, 192  # vtest.avi's 768×576 area-averaged 4× down
# x264 at crf 0 is lossless on its YUV 4:2:0 input, so the only error left is the RGB -> YUV
# 4:2:0 -> RGB conversion (manifest.json gives each clip's PSNR against its source frames).
# Lossy crf values also gave different bytes from run to run on demo.mp4's frames; crf 0 gives
# the same bytes every run.
CRF = 0

STILLS = {  # name: (skimage.data loader, caption)
    "astronaut": (skimage.data.astronaut, "a photograph of an astronaut in a spacesuit"),
    "coffee": (skimage.data.coffee, "a photograph of a cup of coffee on a saucer"),
    "chelsea": (skimage.data.chelsea, "a photograph of a tabby cat"),
    "rocket": (skimage.data.rocket, "a photograph of a rocket on its launch pad"),
    "motorcycle": (lambda: skimage.data.stereo_motorcycle()[0], "a photograph of a motorcycle"),
    "ihc": (skimage.data.immunohistochemistry, "a micrograph of stained tissue"),
    "retina": (skimage.data.retina, "a photograph of a human retina"),
    "hubble": (skimage.data.hubble_deep_field, "a telescope image of distant galaxies"),
    "camera": (skimage.data.camera, "a greyscale photograph of a man with a camera"),
    "moon": (skimage.data.moon, "a greyscale photograph of the moon's surface"),
    "coins": (skimage.data.coins, "a greyscale photograph of old coins"),
    "grass": (skimage.data.grass, "a greyscale photograph of grass"),
    "gravel": (skimage.data.gravel, "a greyscale photograph of gravel"),
    "brick": (skimage.data.brick, "a greyscale photograph of a brick wall"),
    "clock": (skimage.data.clock, "a greyscale photograph of a clock"),
    "page": (skimage.data.page, "a greyscale photograph of a printed page"),
}


# ---- Cutting footage into clips ----


def shots(video: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each shot of a (T, H, W, 3) video, cut at spikes of frame change."""
    change = np.abs(np.diff(video.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # (T-1,)
    padded = np.pad(change, 4, mode="reflect")  # (T+7,)
    around = np.delete(sliding_window_view(padded, 9), 4, axis=1)  # (T-1, 8)
    is_cut = (change > CUT_MIN_CHANGE) & (change > CUT_RATIO * np.median(around, axis=1))
    starts = [0, *(np.flatnonzero(is_cut) + 1).tolist(), len(video)]
    return list(zip(starts[:-1], starts[1:], strict=True))


def windows(shot_list, first: int, last: int, stride: int) -> list[tuple[int, int]]:
    """CLIP_FRAMES-long [start, end) windows inside shots, within frames [first, last)."""
    result = []
    for start, end in shot_list:
        start, end = max(start, first), min(end, last)
        result += [(s, s + CLIP_FRAMES) for s in range(start, end - CLIP_FRAMES + 1, stride)]
    return result


# ---- Sources ----


def load_vtest(explicit: str | None) -> np.ndarray | None:
    """vtest.avi's frames (T, 576, 768, 3): from --vtest, an installed opencv-doc, or apt."""
    if explicit:
        return read_video(explicit)[0]
    installed = pathlib.Path("/") / VTEST_IN_DEB
    if installed.is_file():
        return read_video(installed)[0]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run = dict(cwd=tmp, check=True, capture_output=True, text=True)
            subprocess.run(["apt-get", "download", "opencv-doc"], **run)
            deb = next(pathlib.Path(tmp).glob("opencv-doc_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), "x"], **run)  # unpack only; no root install
        except (OSError, StopIteration, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", None) or error
            print(
                f"WARNING: could not fetch opencv-doc for vtest.avi ({detail}); "
                "unseen_clip/ is not written. Pass --vtest PATH to use a copy."
            )
            return None
        return read_video(pathlib.Path(tmp) / "x" / VTEST_IN_DEB)[0]


def still_frame(image: np.ndarray) -> np.ndarray:
    """Any skimage still to uint8 (1, H, W, 3), the long side at most STILL_MAX_SIDE."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)  # greyscale: three equal channels
    image = image[None, ..., :3]  # (1, h, w, 3)
    scale = min(1.0, STILL_MAX_SIDE / max(image.shape[1:3]))
    height, width = round(image.shape[1] * scale), round(image.shape[2] * scale)
    return center_crop_resize(image, height, width)  # (1, H, W, 3)


# ---- Writing ----


def write_set(folder: pathlib.Path, items: list[dict]) -> list[dict]:
    """Writes items {"name", "video", "fps", "caption", "source"} and captions.jsonl; rows back."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows, captions = [], []
    for item in items:
        video = item["video"]
        if video.shape[0] == 1:
            path, fidelity = folder / f"{item['name']}.png", None  # PNG is lossless
            Image.fromarray(video[0]).save(path)
        else:
            path = pathlib.Path(
                write_mp4(folder / f"{item['name']}.mp4", video, item["fps"], crf=CRF)
            )
            written = read_video(path)[0]  # read back: every frame there, and how close
            if written.shape != video.shape:
                raise RuntimeError(f"{path} reads back as {written.shape}, not {video.shape}")
            fidelity = round(psnr(video, written), 2)
        captions.append(json.dumps({"path": path.name, "caption": item["caption"]}))
        rows.append(
            {
                "path": f"{folder.name}/{path.name}",
                "frames": int(video.shape[0]),
                "height": int(video.shape[1]),
                "width": int(video.shape[2]),
                "bytes": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "psnr_vs_source": fidelity,
                "source": item["source"],
            }
        )
    (folder / "captions.jsonl").write_text("\n".join(captions) + "\n")
    return rows


def clip_items(video, fps, ranges, name, caption, source) -> list[dict]:
    return [
        {
            "name": f"{name}_{start:04d}",
            "video": video[start:end],
            "fps": fps,
            "caption": caption,
            "source": f"{source} frames {start}-{end - 1}",
        }
        for start, end in ranges
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--vtest", help="path to vtest.avi; default: fetch Debian opencv-doc")
    args = parser.parse_args()

    demo, demo_fps = read_video(DEMO_PATH)
    demo = np.ascontiguousarray(demo[:, DEMO_ROWS])  # (1441, 96, 176, 3)
    demo_shots = shots(demo)
    # Split at the first cut past 80 %, so no held-out shot shares a frame with training.
    split = min((s for s, _ in demo_shots if s >= TRAIN_FRACTION * len(demo)), default=len(demo))
    caption = "footage of a live music session in a studio"
    train = clip_items(
        demo,
        demo_fps,
        windows(demo_shots, 0, split, TRAIN_STRIDE),
        "demo",
        caption,
        "iscc-samples demo.mp4 rows 24-119",
    )
    train += [
        {
            "name": name,
            "video": still_frame(load()),
            "fps": 1.0,
            "caption": text,
            "source": f"skimage.data {name}",
        }
        for name, (load, text) in STILLS.items()
    ]
    heldout = clip_items(
        demo,
        demo_fps,
        windows(demo_shots, split, len(demo), CLIP_FRAMES),
        "demo",
        caption,
        "iscc-samples demo.mp4 rows 24-119",
    )

    manifest = {
        "demo_split_frame": split,
        "demo_frames": len(demo),
        "clip_frames": CLIP_FRAMES,
        "crf": CRF,
        "sets": {},
    }
    manifest["sets"]["train"] = write_set(args.out / "train", train)
    manifest["sets"]["heldout_frames"] = write_set(args.out / "heldout_frames", heldout)
    vtest = load_vtest(args.vtest)
    if vtest is not None:
        vtest = center_crop_resize(vtest, UNSEEN_HEIGHT, UNSEEN_WIDTH)  # (795, 144, 192, 3)
        unseen = clip_items(
            vtest,
            10.0,
            windows(shots(vtest), 0, len(vtest), CLIP_FRAMES),
            "vtest",
            "pedestrians walking across a paved square, seen from above",
            "opencv-doc vtest.avi at 192x144",
        )
        manifest["sets"]["unseen_clip"] = write_set(args.out / "unseen_clip", unseen)
    elif (args.out / "unseen_clip").exists():
        shutil.rmtree(args.out / "unseen_clip")  # never leave a stale set beside fresh ones
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    print(
        f"demo.mp4: {len(demo)} frames, {len(demo_shots)} shots; training frames 0-{split - 1}, "
        f"held-out frames {split}-{len(demo) - 1}"
    )
    for name, rows in manifest["sets"].items():
        videos = [r for r in rows if r["frames"] > 1]
        fidelity = min((r["psnr_vs_source"] for r in videos), default=None)
        print(
            f"{args.out / name}: {len(videos)} clips ({sum(r['frames'] for r in videos)} frames, "
            f"written at >= {fidelity} dB PSNR of their source frames), "
            f"{len(rows) - len(videos)} stills, {sum(r['bytes'] for r in rows) / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()
