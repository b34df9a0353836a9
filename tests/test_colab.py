"""colabs/quickstart.ipynb runs headless (nbclient) with a tiny training setting, so it never
rots."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parent.parent / "colabs" / "quickstart.ipynb"

TINY_SETTINGS = """
TRAIN = True
VAE_STEPS, DIT_STEPS = 2, 2
FRAMES, HEIGHT, WIDTH = 5, 16, 16
SAMPLING_STEPS, GUIDANCE = 2, 3.0
WORKDIR = {workdir!r}
PROMPT = 'A large yellow square moves to the left. The background is gray.'
from soraj.configs import t2v as _t2v, vae as _vae
_tiny_dit = _t2v.get_config
def _small_dit(arg):
    config = _tiny_dit(arg)
    config.model.width, config.model.depth, config.model.num_heads = 32, 1, 2
    config.batch_size, config.sample.steps, config.data.num_clips = 4, 2, 64
    return config
_t2v.get_config = _small_dit
_tiny_vae = _vae.get_config
def _small_vae(arg):
    config = _tiny_vae(arg)
    config.batch_size, config.data.num_clips, config.num_stats_batches = 4, 64, 1
    return config
_vae.get_config = _small_vae
"""


def run_notebook(path: Path, settings: str):
    """Runs a notebook headless from the repository root with its one 'parameters' cell
    replaced by `settings`; returns the executed notebook and all its outputs, none an error."""
    notebook = nbformat.read(path, as_version=4)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    parameters[0].source = settings
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}},
    )
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    return notebook, outputs


def test_quickstart_runs(tmp_path):
    notebook, outputs = run_notebook(
        NOTEBOOK, TINY_SETTINGS.format(workdir=str(tmp_path / "colab"))
    )
    html = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "<img" in html  # mediapy showed the video inline
    assert list((tmp_path / "colab" / "samples").glob("*.mp4"))
    last = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert "'overall'" in last


PROMPTING_MODES = NOTEBOOK.parent / "prompting_modes.ipynb"
FEW_STEPS = """
CHECKPOINT = 'experiments/shapes/checkpoint'
STEPS, GUIDANCE, VISUAL_GUIDANCE = 2, 4.0, 1.0
WORKDIR = {workdir!r}
PROMPT = 'A large red circle moves to the right. The background is black.'
"""


def test_prompting_modes_notebook_runs_every_mode(tmp_path):
    notebook, outputs = run_notebook(
        PROMPTING_MODES, FEW_STEPS.format(workdir=str(tmp_path / "modes"))
    )
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for mode in ("image", "extend_forward", "extend_backward", "connect", "text", "edit"):
        assert f"{mode} " in printed, mode
    assert printed.count("given latents kept exactly: True") == 7
    last = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert "'loop'" in last and "'edit'" in last
