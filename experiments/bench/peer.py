"""soraj's DiT train step against the peer a user would otherwise pick, at equal size and work.

The peer is diffusers' WanTransformer3DModel on torch (CPU), run in its own virtual environment
(.venv-peer, from experiments/bench/requirements-peer.txt) by peer_wan.py. Both sides: width
384, depth 6, 6 heads, MLP 4×, patch 1×2×2, 16 latent channels, text of 32 × 384, two clips of
5×16×16 latents (640 tokens a step), rectified-flow loss, AdamW; soraj's step also updates
its EMA. Each round runs each side in a fresh process (warm-up steps, then timed steps, the
median taken), the two sides in turns, the side that goes first alternating; the ratio is
the median over rounds of soraj's tokens/s over the peer's in the same round.

    python3.11 -m venv .venv-peer
    .venv-peer/bin/pip install -r experiments/bench/requirements-peer.txt
    .venv/bin/python experiments/bench/peer.py            # about 5 minutes on 2 cores
"""

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from soraj.cpu_runtime import command_environment

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
WIDTH, DEPTH, HEADS, CLIPS, LATENT, TEXT_TOKENS, TEXT_WIDTH = 384, 6, 6, 2, (5, 16, 16), 32, 384


def peer_size_step(**dit_changes):
    """soraj.train.train_step jitted with donation at the peer's size, on a synthetic batch of
    its two clips: (step, state, batch, rng). The DiT has the trainer's scan, remat and
    modulation (soraj/configs/t2v.py) unless dit_changes (DiTConfig fields) say otherwise."""
    import flax.linen as nn
    import jax
    import numpy as np
    from train_step import Setting, synthetic_batch  # experiments/bench, on sys.path

    from soraj import optim
    from soraj.configs import t2v
    from soraj.generate import init_params
    from soraj.models.conditioning import TextConfig
    from soraj.models.dit import DiT, DiTConfig
    from soraj.train import train_step

    grid = (LATENT[0], LATENT[1] // 2, LATENT[2] // 2)  # patches of one clip
    tokens = int(np.prod(grid))
    config = t2v.get_config("tiny")  # the trainer's optimizer, diffusion and DiT settings
    config.data.token_budget = tokens  # the self-attention window: one clip
    text = TextConfig(max_tokens=TEXT_TOKENS)
    trainer = {k: config.model[k] for k in ("scan_blocks", "remat", "modulation")}
    dit = DiT(
        DiTConfig(
            width=WIDTH,
            depth=DEPTH,
            num_heads=HEADS,
            latent_channels=16,
            text_width=TEXT_WIDTH,
            **(trainer | dit_changes),
        )
    )
    optimizer = optim.make_optimizer(config.optim)
    params = nn.unbox(init_params(dit, text, jax.random.key(0)))
    state = optim.TrainState.create(params, optimizer, jax.random.key(1))
    setting = Setting("peer_size", "tiny", "float32", CLIPS, tokens, grid, latent_channels=16)
    batch = jax.device_put(synthetic_batch(setting, dit.config.patch_features, text))
    step = jax.jit(
        functools.partial(train_step, dit=dit, text=text, optimizer=optimizer, config=config),
        donate_argnums=0,
    )
    return step, state, batch, jax.random.key(2)


def soraj_round(steps: int, warmup: int, dit_changes: dict | None = None) -> dict:
    """One timed round of soraj.train.train_step at the peer's size (run in a fresh process)."""
    import jax

    step, state, batch, rng = peer_size_step(**(dit_changes or {}))
    tokens = int(batch["segment_ids"].size)
    times = []
    for i in range(warmup + steps):
        if i == warmup:
            usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        state, metrics = step(state, batch, rng)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "page_faults_per_step": (after.ru_minflt - usage.ru_minflt) / steps,
        "system_seconds_per_step": (after.ru_stime - usage.ru_stime) / steps,
        "side": "soraj",
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "tokens_per_step": tokens,
        "step_seconds": times,
        "tokens_per_s": tokens / statistics.median(times),
    }


def run_side(
    side: str, steps: int, warmup: int, peer_python: Path, environ: dict, dit: dict | None = None
) -> dict:
    """One round of a side in a fresh process; dit: DiTConfig changes for soraj's step."""
    common = ["--steps", str(steps), "--warmup", str(warmup)]
    if side == "peer":
        command = [str(peer_python), str(HERE / "peer_wan.py"), "--threads", "2", *common]
    else:
        command = [sys.executable, str(Path(__file__)), "--side", "soraj", *common]
        command += ["--dit", json.dumps(dit or {})]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, check=False, env=environ
    )
    if done.returncode:
        raise RuntimeError(f"{side} round failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peer-python", type=Path, default=ROOT / ".venv-peer/bin/python")
    parser.add_argument("--plain-environment", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "peer.json")
    parser.add_argument("--side", choices=("soraj",), help=argparse.SUPPRESS)  # one round
    parser.add_argument("--dit", type=json.loads, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(soraj_round(args.steps, args.warmup, args.dit)))
        return
    if not args.peer_python.exists():
        raise SystemExit(
            f"no peer environment at {args.peer_python}; make it with\n"
            "  python3.11 -m venv .venv-peer && "
            ".venv-peer/bin/pip install -r experiments/bench/requirements-peer.txt"
        )
    # Both sides run in the environment the soraj command gives itself (soraj/cpu_runtime.py:
    # huge pages), or both in the caller's with --plain-environment.
    environ = dict(os.environ) if args.plain_environment else command_environment(os.environ)
    rounds = []
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        order = ("peer", "soraj") if round_ % 2 == 0 else ("soraj", "peer")
        result = {
            side: run_side(side, args.steps, args.warmup, args.peer_python, environ)
            for side in order
        }
        result["ratio"] = result["soraj"]["tokens_per_s"] / result["peer"]["tokens_per_s"]
        rounds.append(result)
        print(
            f"round {round_ + 1}/{args.rounds}: soraj {result['soraj']['tokens_per_s']:.0f} "
            f"tokens/s, peer {result['peer']['tokens_per_s']:.0f}, ratio {result['ratio']:.3f}",
            flush=True,
        )
    summary = {
        "ratio": statistics.median(r["ratio"] for r in rounds),
        "soraj_tokens_per_s": statistics.median(r["soraj"]["tokens_per_s"] for r in rounds),
        "peer_tokens_per_s": statistics.median(r["peer"]["tokens_per_s"] for r in rounds),
        "soraj_params": rounds[0]["soraj"]["params"],
        "peer_params": rounds[0]["peer"]["params"],
        "peer_model": rounds[0]["peer"]["model"],
        "torch": rounds[0]["peer"]["torch"],
        "glibc_tunables": environ.get("GLIBC_TUNABLES", ""),
        "xla_flags": environ.get("XLA_FLAGS", ""),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"soraj / peer tokens/s: {summary['ratio']:.3f}; wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
