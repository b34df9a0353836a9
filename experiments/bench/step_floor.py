"""The least time XLA:CPU needs for a DiT train step at peer.py's size, against the peer's step.

A train step must at least run its matmuls (forward and both backward products of each) and
its AdamW + EMA update. This script times exactly that and nothing else, in a fresh process:
  matmuls   every matmul of the standard FLOP count (dit_flops.model_train_step_flops) at
            peer.py's size (two rows of one 320-token clip, text of 32 tokens, depth 6),
            each on its own fresh operands in XLA's preferred layout, returned so none is
            dropped: no norms, softmax, RoPE, masks, transposes or copies;
  update    soraj.optim's AdamW (under apply_if_finite, clipped) and EMA on the step's
            parameters, as TrainState.apply_gradients runs them in the train step.
Their sum is a floor: a soraj step cannot beat it on this machine without faster kernels. The
peer (diffusers' WanTransformer3DModel, peer_wan.py) runs in turns with it, and the result
says which tokens/s ratio over the peer that floor allows at most.

    .venv/bin/python experiments/bench/step_floor.py      # about 3 minutes on 2 cores
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peer import CLIPS, DEPTH, HEADS, LATENT, TEXT_TOKENS, WIDTH, peer_size_step, run_side

from soraj.cpu_runtime import command_environment

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def block_matmuls(rows: int, tokens: int, text_tokens: int) -> list[tuple[int, int, int, int]]:
    """One block's forward matmuls as (batch, m, k, n) at WIDTH, HEADS and MLP 4×."""
    T, D, N = rows * tokens, WIDTH, HEADS
    K = D // N
    return [
        *[(1, T, D, D)] * 4,  # self-attention q, k, v, out
        (rows * N, tokens, K, tokens),  # scores
        (rows * N, tokens, tokens, K),  # values
        *[(1, T, D, D)] * 2,  # cross-attention q, out
        *[(1, rows * text_tokens, D, D)] * 2,  # cross-attention k, v (text)
        (rows * N, tokens, K, text_tokens),
        (rows * N, tokens, text_tokens, K),
        (1, T, D, 4 * D),  # MLP in
        (1, T, 4 * D, D),  # MLP out
    ]


def step_matmuls(rows: int, tokens: int, text_tokens: int, patch: int) -> list[tuple]:
    """Every forward matmul of a train step, then both backward products of each."""
    T, D = rows * tokens, WIDTH
    forward = block_matmuls(rows, tokens, text_tokens) * DEPTH
    forward += [(1, T, patch, D), (1, T, D, patch), (1, rows * text_tokens, D, D)]
    backward = []
    for b, m, k, n in forward:
        backward += [(b, m, n, k), (b, k, m, n)]  # dA = dC Bᵀ, dB = Aᵀ dC
    return forward + backward


def floor_round(steps: int, warmup: int) -> dict:
    """Times the matmuls and the update of one step, each as one jitted program."""
    import jax
    import jax.numpy as jnp

    from soraj import optim
    from soraj.configs import t2v

    tokens = LATENT[0] * (LATENT[1] // 2) * (LATENT[2] // 2)
    shapes = step_matmuls(CLIPS, tokens, TEXT_TOKENS, patch=4 * 16)
    keys = jax.random.split(jax.random.key(0), 2 * len(shapes))
    operands = [
        (
            jax.random.normal(keys[2 * i], (b, m, k), jnp.float32),
            jax.random.normal(keys[2 * i + 1], (b, k, n), jnp.float32),
        )
        for i, (b, m, k, n) in enumerate(shapes)
    ]
    matmuls = jax.jit(lambda ops: [jnp.einsum("bmk,bkn->bmn", a, w) for a, w in ops])
    flops = sum(2 * b * m * k * n for b, m, k, n in shapes)

    _, state, _, _ = peer_size_step()
    config = t2v.get_config("tiny")
    optimizer = optim.make_optimizer(config.optim)
    grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), state.params)
    update = jax.jit(
        functools.partial(
            optim.TrainState.apply_gradients,
            optimizer=optimizer,
            ema_decay=config.optim.ema_decay,
        ),
        donate_argnums=0,
    )

    def timed(run) -> list[float]:
        times = []
        for i in range(warmup + steps):
            started = time.perf_counter()
            jax.block_until_ready(run())
            if i >= warmup:
                times.append(time.perf_counter() - started)
        return times

    matmul_times = timed(lambda: matmuls(operands))
    holder = [state]

    def one_update():
        holder[0] = update(holder[0], grads)
        return holder[0]

    update_times = timed(one_update)
    return {
        "side": "floor",
        "matmul_flops": flops,
        "matmul_seconds": statistics.median(matmul_times),
        "update_seconds": statistics.median(update_times),
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "tokens_per_step": CLIPS * tokens,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peer-python", type=Path, default=ROOT / ".venv-peer/bin/python")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "step_floor.json")
    parser.add_argument("--side", choices=("floor",), help=argparse.SUPPRESS)  # one round
    args = parser.parse_args()
    if args.side:
        print(json.dumps(floor_round(args.steps, args.warmup)))
        return
    if not args.peer_python.exists():
        raise SystemExit(f"no peer environment at {args.peer_python}; see peer.py")
    environ = command_environment(os.environ)  # both sides with the soraj command's huge pages
    rounds = []
    for round_ in range(args.rounds):
        peer = run_side("peer", args.steps, args.warmup, args.peer_python, environ)
        command = [sys.executable, __file__, "--side", "floor"]
        command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        done = subprocess.run(command, capture_output=True, text=True, env=environ, cwd=ROOT)
        if done.returncode:
            raise RuntimeError(f"floor round failed:\n{done.stderr[-3000:]}")
        floor = json.loads(done.stdout.strip().splitlines()[-1])
        peer_step = statistics.median(peer["step_seconds"])
        floor_step = floor["matmul_seconds"] + floor["update_seconds"]
        rounds.append(
            {
                "peer": peer,
                "floor": floor,
                "peer_step_seconds": peer_step,
                "floor_step_seconds": floor_step,
                "most_ratio": peer_step / floor_step,
            }
        )
        print(
            f"round {round_ + 1}/{args.rounds}: peer step {peer_step * 1e3:.0f} ms; floor "
            f"{floor_step * 1e3:.0f} ms (matmuls {floor['matmul_seconds'] * 1e3:.0f} at "
            f"{floor['matmul_flops'] / floor['matmul_seconds'] / 1e9:.0f} GFLOP/s, update "
            f"{floor['update_seconds'] * 1e3:.0f}); most ratio {rounds[-1]['most_ratio']:.3f}",
            flush=True,
        )
    summary = {
        "most_ratio": statistics.median(r["most_ratio"] for r in rounds),
        "peer_step_seconds": statistics.median(r["peer_step_seconds"] for r in rounds),
        "floor_step_seconds": statistics.median(r["floor_step_seconds"] for r in rounds),
        "matmul_seconds": statistics.median(r["floor"]["matmul_seconds"] for r in rounds),
        "update_seconds": statistics.median(r["floor"]["update_seconds"] for r in rounds),
        "matmul_flops": rounds[0]["floor"]["matmul_flops"],
        "glibc_tunables": environ.get("GLIBC_TUNABLES", ""),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(
        f"the step's matmuls and update alone allow at most {summary['most_ratio']:.3f}× the "
        f"peer's tokens/s; wrote {args.out}"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
