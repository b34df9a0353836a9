"""The sampler computes the text side once per generation: in the compiled Euler loop no matrix
product touches the text tokens' rows, only the video tokens'."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from soraj.generate import init_params, single_request_rows
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DiT, DiTConfig
from soraj.sample_rows import sample_rows

# Sizes chosen so no two of them coincide: a product over the text has 2·M = 10 rows (the
# doubled guidance batch), over the video 2·N = 24.
M, E, GRID = 5, 48, (3, 2, 2)


def computations(hlo: str) -> dict[str, list[str]]:
    """HLO text → {computation name: its instruction lines}."""
    named, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?(%[\w.\-]+) .*\{$", line)
        if header:
            current = header.group(1)
            named[current] = []
        elif current:
            named[current].append(line)
    return named


def reachable(named: dict, root: str) -> set[str]:
    seen, stack = {root}, [root]
    while stack:
        for line in named.get(stack.pop(), []):
            for callee in re.findall(
                r"(?:calls|body|condition|to_apply|branch_computations)=\{?(%[\w.\-]+)", line
            ):
                if callee not in seen:
                    seen.add(callee)
                    stack.append(callee)
    return seen


def dot_rows(lines) -> list[int]:
    """The leading dimension of every 2D dot's result: the rows its projection runs over."""
    return [
        int(m.group(1))
        for line in lines
        for m in [re.search(r"f32\[(\d+),\d+\]\S* dot\(", line)]
        if m
    ]


def test_text_projections_and_keys_values_run_outside_the_euler_loop():
    dit = DiT(DiTConfig(width=64, depth=2, num_heads=2, latent_channels=4, text_width=E))
    text_config = TextConfig(max_tokens=M)
    params = nn.unbox(init_params(dit, text_config, jax.random.key(0)))
    num_tokens = GRID[0] * GRID[1] * GRID[2]
    conditioning = dict(
        text=jnp.ones((1, 1, M, E)),
        text_mask=jnp.ones((1, 1, M), bool),
        null_text=jnp.zeros((M, E)),
        null_mask=jnp.ones((M,), bool),
    )
    noise = jnp.ones((1, num_tokens, dit.config.patch_features))
    rows = single_request_rows(noise, GRID, 1.0, conditioning)
    hlo = (
        sample_rows.lower(
            params, rows, jnp.float32(3.0), dit=dit, text_config=text_config, num_steps=4
        )
        .compile()
        .as_text()
    )
    named = computations(hlo)
    loop_bodies = [
        re.search(r"body=(%[\w.\-]+)", line).group(1)
        for lines in named.values()
        for line in lines
        if " while(" in line
    ]
    in_loop = set().union(*(reachable(named, body) for body in loop_bodies))
    inside = dot_rows(line for name in in_loop for line in named[name])
    outside = dot_rows(line for name in set(named) - in_loop for line in named[name])
    text_rows, video_rows = 2 * M, 2 * num_tokens
    # Outside: the text projection and each block's cross-attention keys and values.
    assert outside.count(text_rows) >= 1 + 2 * dit.config.depth, outside
    assert text_rows not in inside, inside
    assert inside.count(video_rows) >= 4 * dit.config.depth  # the per-step work stays
