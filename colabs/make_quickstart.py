"""Writes colabs/quickstart.ipynb from this script (run from the repository root), so the notebook
stays reviewable as code."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
    md(
        "# soraj quickstart\n\nText → video with soraj, a JAX/Flax Sora-style system, on the "
        "Shapes world. This notebook installs soraj, loads the shipped Shapes checkpoint (or "
        "trains a small one), generates a video from a prompt and scores it with the shapes "
        "probe. It runs on a Colab CPU; a GPU or TPU runtime is faster."
    ),
    code(
        "# Install: in Colab, clone the repository and install its pinned requirements.\n"
        "# REPO_URL: the git URL of your soraj repository (the one this notebook came from).\n"
        "import os, subprocess, sys\n"
        "REPO_URL = os.environ.get('SORAJ_REPO_URL', '')\n"
        "if 'google.colab' in sys.modules and not os.path.exists('soraj'):\n"
        "    if not REPO_URL:\n"
        "        raise ValueError('set REPO_URL to the git URL of the soraj repository to clone')\n"
        "    subprocess.run(['git', 'clone', '--depth=1', REPO_URL, 'soraj'], check=True)\n"
        "    os.chdir('soraj')\n"
        "    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '-r', 'requirements.txt'], check=True)\n"
        "    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '-r', 'requirements-nodeps.txt', '-e', '.'], check=True)"
    ),
    md(
        "## Settings\n\n`TRAIN = False` uses the shipped checkpoint in "
        "`experiments/shapes/checkpoint`. `TRAIN = True` trains a VAE and a DiT here first "
        "(the step counts below take about 15 minutes on a 2-core CPU)."
    ),
    code(
        "TRAIN = False\n"
        "VAE_STEPS, DIT_STEPS = 600, 1000\n"
        "FRAMES, HEIGHT, WIDTH = 9, 32, 32  # the clips TRAIN = True trains on\n"
        "SAMPLING_STEPS, GUIDANCE = 30, 4.0\n"
        "WORKDIR = 'out/colab'\n"
        "PROMPT = 'A large yellow square moves to the left. A small cyan circle stays still. The background is gray.'",
        metadata={"tags": ["parameters"]},
    ),
    code(
        "from pathlib import Path\n"
        "import shutil\n"
        "import imageio_ffmpeg, mediapy\n"
        "if shutil.which('ffmpeg') is None:  # mediapy encodes with ffmpeg; imageio-ffmpeg ships one\n"
        "    mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())\n"
        "from soraj.demo import SHIPPED_CHECKPOINT\n"
        "from soraj.configs import t2v, vae\n"
        "from soraj import train, train_vae\n\n"
        "checkpoint = SHIPPED_CHECKPOINT\n"
        "if TRAIN:\n"
        "    vae_config = vae.get_config('tiny')\n"
        "    vae_config.data.num_frames, vae_config.data.height, vae_config.data.width = FRAMES, HEIGHT, WIDTH\n"
        "    vae_config.total_steps = vae_config.save_every = vae_config.sample_every = VAE_STEPS\n"
        "    train_vae.train_and_evaluate(vae_config, Path(WORKDIR) / 'vae')\n"
        "    dit_config = t2v.get_config('tiny')\n"
        "    dit_config.vae_checkpoint = str(Path(WORKDIR) / 'vae')\n"
        "    dit_config.data.num_frames, dit_config.data.height, dit_config.data.width = FRAMES, HEIGHT, WIDTH\n"
        "    dit_config.total_steps = dit_config.save_every = dit_config.sample_every = DIT_STEPS\n"
        "    train.train_and_evaluate(dit_config, Path(WORKDIR) / 'dit')\n"
        "    checkpoint = Path(WORKDIR) / 'dit'\n"
        "print('checkpoint:', checkpoint)"
    ),
    md("## Generate"),
    code(
        "# What `soraj generate` does: every input checked before the weights load, then sampled\n"
        "# and written (mp4, gif, json) at the frame rate the model was trained on.\n"
        "from soraj.generate_request import GenerateRequest, generate\n\n"
        "# The shipped checkpoint generates at the size it was trained on (frames etc. None).\n"
        "size = dict(frames=FRAMES, height=HEIGHT, width=WIDTH) if TRAIN else {}\n"
        "request = GenerateRequest(PROMPT, str(checkpoint), **size, steps=SAMPLING_STEPS,\n"
        "                          guidance=GUIDANCE, out=str(Path(WORKDIR) / 'samples'))\n"
        "generated = generate(request)\n"
        "video = generated.video\n"
        "zoom = 256 // video.shape[1]\n"
        "mediapy.show_video(video.repeat(zoom, axis=1).repeat(zoom, axis=2), fps=generated.fps, codec='gif')"
    ),
    md(
        "## Score it with the shapes probe\n\nThe probe finds each object the caption names "
        "and checks its colour, shape and motion, and the background."
    ),
    code(
        "from soraj.eval.shapes_probe import score_video\n"
        "scores = score_video(video, PROMPT)\n"
        "scores"
    ),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
INSTALL_CELL = nb.cells[1]  # shared with make_prompting_modes.py

if __name__ == "__main__":
    nbf.write(nb, "colabs/quickstart.ipynb")
