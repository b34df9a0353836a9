"""Where a captioner's colour→shape prior lives: in its video encoder, in its text decoder, or both.

Three measures, the first two on one-object clips without the captioner's own decoding:
- **encoder probe**: a linear classifier of the object's shape on the mean and max of the
  encoder's tokens, fitted on training-distribution clips and scored on held-out pairs. If the
  encoder's shape features were colour-free, the probe would carry over; if it learned shape
  jointly with colour, it does not.
- **decoder, teacher-forced**: the shape word the decoder ranks first after the clip's exact
  caption up to the shape, with the true colour word, and with the colour word swapped for a
  training colour that is seen with that shape. The gap between the two is what the colour
  word alone vetoes.
- **held-out errors**: the colour–shape pairs of greedy dense captions of held-out clips (one
  or two objects) that differ from the clip's, most common first.

  .venv/bin/python experiments/captioner/diagnose_prior.py \
      --checkpoint experiments/shapes/checkpoint/captioner \
      --out experiments/captioner/results/prior_v7.json
"""

import argparse
import collections
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from soraj.captions.captioner import Captioner, prepare_videos
from soraj.captions.train_captioner import HELDOUT_SEED_OFFSET
from soraj.data.shapes import SHAPES, ShapesSource, parse_dense_caption

# A training colour seen with the held-out shape, for each held-out pair's colour.
SWAP = {"purple": "red", "cyan": "red", "orange": "blue", "white": "green"}


def one_object_clips(source: ShapesSource) -> list[dict]:
    items = [source[i] for i in range(len(source))]
    return [item for item in items if len(parse_dense_caption(item["caption"]).objects) == 1]


def pooled_features(captioner: Captioner, items) -> np.ndarray:
    rows = []
    for start in range(0, len(items), 128):
        videos = np.stack([item["video"] for item in items[start : start + 128]])
        memory = captioner._encode(
            captioner.params, jnp.asarray(prepare_videos(videos, captioner.config))
        )
        rows.append(np.asarray(jnp.concatenate([memory.mean(1), memory.max(1)], -1)))
    return np.concatenate(rows)  # (N, 2D)


def shapes_of(items) -> np.ndarray:
    return np.array(
        [SHAPES.index(parse_dense_caption(i["caption"]).objects[0].shape) for i in items]
    )


def probe_accuracy(train_x, train_y, test_x, test_y, steps=1000) -> tuple[float, float]:
    """Softmax regression (L2 1e-3, Adam 1e-2) on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    params = (jnp.zeros((train_x.shape[1], len(SHAPES))), jnp.zeros(len(SHAPES)))
    optimizer = optax.adam(1e-2)

    def loss(p):
        logits = train_x @ p[0] + p[1]
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, train_y
        ).mean() + 1e-3 * jnp.sum(p[0] ** 2)

    @jax.jit
    def step(p, state):
        updates, state = optimizer.update(jax.grad(loss)(p), state)
        return optax.apply_updates(p, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        params, state = step(params, state)

    def accuracy(x, y):
        return float(np.mean(np.asarray((x @ params[0] + params[1]).argmax(1)) == y))

    return accuracy(train_x, train_y), accuracy(test_x, test_y)


def forced_shape_accuracy(captioner: Captioner, captions, videos, truth) -> float:
    vocab = captioner.vocab
    shape_ids = [vocab.piece_ids([s])[0] for s in SHAPES]
    tokens = vocab.encode(captions, ["dense"] * len(captions), captioner.config.max_length)
    video = jnp.asarray(prepare_videos(videos, captioner.config))
    logits = np.asarray(
        captioner.model.apply({"params": captioner.params}, video, jnp.asarray(tokens[:, :-1]))
    )
    chosen = []
    for row in range(len(captions)):
        position = next(j for j in range(1, tokens.shape[1]) if tokens[row, j] in shape_ids)
        chosen.append(int(np.argmax(logits[row, position - 1, shape_ids])))
    return float(np.mean(np.array(chosen) == truth))


def pair_errors(captioner: Captioner, items, top: int = 12) -> list[dict]:
    """(true pairs, written pairs, count) of the captions whose colour–shape pairs are wrong."""
    captions = captioner.caption(np.stack([item["video"] for item in items]), "dense")
    errors = collections.Counter()
    for item, caption in zip(items, captions, strict=True):
        truth = sorted(
            f"{o.colour} {o.shape}" for o in parse_dense_caption(item["caption"]).objects
        )
        try:
            written = sorted(f"{o.colour} {o.shape}" for o in parse_dense_caption(caption).objects)
        except ValueError:
            written = ["(does not parse)"]
        if written != truth:
            errors[(" + ".join(truth), " + ".join(written))] += 1
    return [{"truth": t, "written": w, "clips": n} for (t, w), n in errors.most_common(top)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a captioner export")
    parser.add_argument("--train-clips", type=int, default=3000)
    parser.add_argument("--heldout-clips", type=int, default=600)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    captioner = Captioner.load(args.checkpoint)
    train = one_object_clips(ShapesSource(args.train_clips, 9, 32, 32, 0, "train"))
    heldout = one_object_clips(
        ShapesSource(args.heldout_clips, 9, 32, 32, HELDOUT_SEED_OFFSET, "heldout")
    )
    train_y, heldout_y = shapes_of(train), shapes_of(heldout)
    probe_train, probe_heldout = probe_accuracy(
        pooled_features(captioner, train), train_y, pooled_features(captioner, heldout), heldout_y
    )
    videos = np.stack([item["video"] for item in heldout])
    captions = [item["caption"] for item in heldout]
    colours = [parse_dense_caption(c).objects[0].colour for c in captions]
    swapped = [
        c.replace(colour, SWAP[colour], 1) for c, colour in zip(captions, colours, strict=True)
    ]
    every_heldout = ShapesSource(args.heldout_clips, 9, 32, 32, HELDOUT_SEED_OFFSET, "heldout")
    result = {
        "checkpoint": args.checkpoint,
        "one_object_clips": {"train": len(train), "heldout": len(heldout)},
        "encoder_probe_accuracy": {"train": probe_train, "heldout": probe_heldout},
        "decoder_forced_shape_accuracy_heldout": {
            "true_colour": forced_shape_accuracy(captioner, captions, videos, heldout_y),
            "swapped_colour": forced_shape_accuracy(captioner, swapped, videos, heldout_y),
        },
        "heldout_pair_errors": {
            "clips": len(every_heldout),
            "most_common": pair_errors(
                captioner, [every_heldout[i] for i in range(len(every_heldout))]
            ),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
