"""Writes colabs/prompting_modes.ipynb from this script (run from the repository root), so the
notebook stays reviewable as code."""

import nbformat as nbf

from make_quickstart import INSTALL_CELL  # colabs/, the script's own folder

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
    md(
        "# soraj prompting modes\n\nOne model and one sampler do more than text to video: "
        "image to video (at any frame, several keyframes), extending a video forward or "
        "backward, connecting two videos, seamless loops and editing a video from a prompt "
        "(SDEdit). Each cell below runs one mode on the shipped Shapes checkpoint, exactly as "
        "`soraj generate` runs it with the flag shown, and plays the result."
    ),
    INSTALL_CELL,  # the same install cell as the quickstart
    code(
        "CHECKPOINT = 'experiments/shapes/checkpoint'\n"
        "STEPS, GUIDANCE, VISUAL_GUIDANCE = 30, 4.0, 1.0\n"
        "WORKDIR = 'out/prompting_modes'\n"
        "PROMPT = 'A large red circle moves to the right. The background is black.'",
        metadata={"tags": ["parameters"]},
    ),
    md(
        "## Inputs\n\nA Shapes clip plays the user's video: 21 frames of a red circle moving "
        "right, written as MP4 files, and its first frame as a PNG."
    ),
    code(
        "from pathlib import Path\n"
        "import shutil\n"
        "import imageio_ffmpeg, mediapy\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "if shutil.which('ffmpeg') is None:  # mediapy encodes with ffmpeg; imageio-ffmpeg ships one\n"
        "    mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())\n"
        "from soraj.data.shapes import FPS, ShapeObject, ShapesScene, render_tracks\n"
        "from soraj.data.video_io import write_mp4\n\n"
        "inputs = Path(WORKDIR) / 'inputs'\n"
        "inputs.mkdir(parents=True, exist_ok=True)\n"
        "scene = ShapesScene((ShapeObject('red', 'circle', 'large', 'moves to the right'),), 'black')\n"
        "track = np.stack([np.full(21, 16.0), np.linspace(6.0, 26.0, 21)], -1)[None]  # (1, T, 2)\n"
        "clip = render_tracks(scene, track, 32, 32)\n"
        "paths = {\n"
        "    'first': write_mp4(inputs / 'first.mp4', clip[:9], FPS),\n"
        "    'second': write_mp4(inputs / 'second.mp4', clip[12:], FPS),\n"
        "    'image': str(inputs / 'frame0.png'),\n"
        "}\n"
        "Image.fromarray(clip[0]).save(paths['image'])\n"
        "mediapy.show_video(clip, fps=FPS, width=192)"
    ),
    code(
        "from soraj.cli import generate_parser\n"
        "from soraj.generate import Generator\n"
        "from soraj.generate_modes import run_mode\n"
        "from soraj.generate_request import GenerateRequest, check_request\n\n"
        "generator = Generator.load(CHECKPOINT)\n\n"
        "def generate(*flags, prompt=PROMPT):\n"
        "    '''What `soraj generate --prompt PROMPT FLAGS` makes, shown inline.'''\n"
        "    args = generate_parser().parse_args(\n"
        "        ['--checkpoint', CHECKPOINT, '--prompt', prompt, '--steps', str(STEPS),\n"
        "         '--guidance', str(GUIDANCE), '--visual-guidance', str(VISUAL_GUIDANCE), *flags])\n"
        "    checked = check_request(GenerateRequest.from_args(args))  # inputs read, fitted, checked\n"
        "    request = checked.request  # the clip size filled in from the model's training\n"
        "    shape = (request.frames, request.height, request.width)\n"
        "    video, info = run_mode(generator, checked.mode, prompt, shape, args.seed, args.steps,\n"
        "                           args.guidance, args.visual_guidance, checked.fps)\n"
        "    print(info['mode'], f'{len(video)} frames; given latents kept exactly:',\n"
        "          info['given_latent_max_error'] == 0.0)\n"
        "    info['fps'] = checked.fps  # the rate the model was trained on\n"
        "    mediapy.show_video(video, fps=info['fps'], width=192)\n"
        "    return video, info"
    ),
    md("## Image to video\n\n`--image frame0.png` (the image at frame 0), then `@4` for frame 4."),
    code("results = {}\nresults['image'] = generate('--image', paths['image'])"),
    code("results['image@4'] = generate('--image', paths['image'] + '@4')"),
    md("## Extend forward and backward\n\n`--video first.mp4 --extend forward|backward`."),
    code("results['forward'] = generate('--video', paths['first'], '--extend', 'forward')"),
    code("results['backward'] = generate('--video', paths['second'], '--extend', 'backward')"),
    md("## Connect two videos\n\n`--connect first.mp4 second.mp4`: the gap is generated."),
    code("results['connect'] = generate('--connect', paths['first'], paths['second'])"),
    md("## A seamless loop\n\n`--loop`: the video, then a bridge from its end back to its start."),
    code(
        "results['loop'] = generate('--loop')\n"
        "video, info = results['loop']\n"
        "mediapy.show_video(np.concatenate([video] * 3), fps=info['fps'], width=192)  # 3 cycles"
    ),
    md("## Edit a video (SDEdit)\n\n`--edit first.mp4 --strength 0.7` with a new prompt."),
    code(
        "results['edit'] = generate('--edit', paths['first'], '--strength', '0.7',\n"
        "                           prompt='A large green square moves to the right. The background is black.')"
    ),
    code("{name: (len(video), info['mode']) for name, (video, info) in results.items()}"),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}

if __name__ == "__main__":
    nbf.write(nb, "colabs/prompting_modes.ipynb")
    print("wrote colabs/prompting_modes.ipynb")
