"""The sampler's per-step progress: with report_steps each Euler step calls back to the host
exactly once, the open bar follows, and the samples are bitwise those without it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from soraj.generate import init_params, single_request_rows
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DiT, DiTConfig
from soraj.sample_rows import sample_rows
from soraj.sampling_progress import StepProgress

STEPS, M, E, GRID = 5, 4, 32, (2, 2, 2)


class RecordingProgress(StepProgress):
    def __init__(self, total):
        super().__init__(total)
        self.reported = []

    def advance_to(self, done):
        self.reported.append(done)
        super().advance_to(done)


def test_each_step_reports_once_and_the_samples_do_not_change(capsys):
    dit = DiT(DiTConfig(width=32, depth=1, num_heads=2, latent_channels=4, text_width=E))
    text_config = TextConfig(max_tokens=M)
    params = nn.unbox(init_params(dit, text_config, jax.random.key(0)))
    num_tokens = GRID[0] * GRID[1] * GRID[2]
    conditioning = dict(
        text=jax.random.normal(jax.random.key(1), (2, 1, M, E)),
        text_mask=jnp.ones((2, 1, M), bool),
        null_text=jnp.zeros((M, E)),
        null_mask=jnp.ones((M,), bool),
    )
    noise = jax.random.normal(jax.random.key(2), (2, num_tokens, dit.config.patch_features))
    rows = single_request_rows(noise, GRID, 1.0, conditioning)
    static = dict(dit=dit, text_config=text_config, num_steps=STEPS)

    with RecordingProgress(STEPS) as silent:
        plain = jax.block_until_ready(sample_rows(params, rows, jnp.float32(3.0), **static))
    assert silent.reported == []  # without report_steps nothing calls back
    with RecordingProgress(STEPS) as progress:
        reported = sample_rows(params, rows, jnp.float32(3.0), **static, report_steps=True)
        reported = jax.block_until_ready(reported)
    assert sorted(progress.reported) == list(range(1, STEPS + 1))
    assert progress.bar.n == STEPS
    np.testing.assert_array_equal(np.asarray(reported), np.asarray(plain))
    assert f"{STEPS}/{STEPS}" in capsys.readouterr().err
