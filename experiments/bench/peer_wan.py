"""One timed round of the peer's train step: diffusers' WanTransformer3DModel on torch, CPU.

Runs in the peer's own environment (.venv-peer, experiments/bench/requirements-peer.txt) and
prints one JSON line. The model and batch match `peer.py`'s soraj side: width 384 (6 heads of
64), depth 6, MLP 4× (ffn_dim 1536), patch 1×2×2, 16 latent channels, text of 32 × 384, two
clips of 5×16×16 latents (640 tokens a step), rectified-flow loss, AdamW.

    .venv-peer/bin/python experiments/bench/peer_wan.py --steps 10 --threads 2
"""

import argparse
import json
import time

import torch
from diffusers import WanTransformer3DModel


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--latent", type=int, nargs=3, default=(5, 16, 16), metavar=("T", "H", "W"))
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--text-width", type=int, default=384)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=args.heads,
        attention_head_dim=args.width // args.heads,
        in_channels=16,
        out_channels=16,
        text_dim=args.text_width,
        ffn_dim=4 * args.width,
        num_layers=args.depth,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    frames, height, width = args.latent
    x0 = torch.randn(args.clips, 16, frames, height, width)
    text = torch.randn(args.clips, args.text_tokens, args.text_width)

    def step():
        t = torch.rand(args.clips)
        noise = torch.randn_like(x0)
        x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
        v = model(x_t, t * 1000, text, return_dict=False)[0]
        loss = torch.mean((v - (noise - x0)) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    tokens = args.clips * frames * (height // 2) * (width // 2)
    median = sorted(times)[len(times) // 2]
    print(
        json.dumps(
            {
                "side": "peer",
                "model": "diffusers.WanTransformer3DModel",
                "torch": torch.__version__,
                "params": sum(p.numel() for p in model.parameters()),
                "tokens_per_step": tokens,
                "step_seconds": times,
                "tokens_per_s": tokens / median,
            }
        )
    )


if __name__ == "__main__":
    main()
