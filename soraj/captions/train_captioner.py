"""Captioner trainer, `train_and_evaluate(config, workdir)`: pre-training on the original (web)
captions of every clip, then fine-tuning on the small labelled subset in the dense and short
modes (DALL·E 3 §2.1). Checkpoints, resume, preemption, metrics.jsonl and the progress bar are
the other trainers' (soraj/step_loop.py); the export in WORKDIR/export is what `soraj caption`
and `soraj recaption` load."""

import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from soraj import checkpoint, fault_tolerance, optim, step_loop
from soraj.captions.accuracy import caption_accuracy
from soraj.captions.captioner import (
    Captioner,
    CaptionerConfig,
    CaptionModel,
    caption_loss,
    export_captioner,
    frame_indices,
    init_captioner,
)
from soraj.captions.vocab import CaptionVocab
from soraj.data.pipeline import batch_iterator
from soraj.data.shapes import (
    COLOURS,
    ShapesScene,
    ShapesSource,
    clip_scene_tracks,
    dense_caption,
    parse_dense_caption,
    render_tracks,
    sample_scene,
    short_caption,
)
from soraj.data.shapes_alt_text import AltTextNoise, is_labelled, original_caption
from soraj.data.shapes_recolour import random_object_colours

PHASES = ("pretrain", "finetune")
OBJECT_ORDERS = ("reading", "scene")  # how labelled captions order a clip's objects
HELDOUT_SEED_OFFSET = 7_000_003  # held-out evaluation clips: another seed and the held-out pairs
MIRRORED = {"moves to the left": "moves to the right", "moves to the right": "moves to the left"}
REVERSED = {**MIRRORED, "moves up": "moves down", "moves down": "moves up"}

# ---- Data -------------------------------------------------------------------------------------


def training_source(config) -> ShapesSource:
    data = config.data
    if data.source != "shapes":
        raise ValueError(f"config.data.source={data.source!r}; allowed: shapes")
    if data.object_order not in OBJECT_ORDERS:
        raise ValueError(
            f"config.data.object_order={data.object_order!r}; allowed: {', '.join(OBJECT_ORDERS)}"
        )
    noise = AltTextNoise(**data.alt_text)
    return ShapesSource(
        data.num_clips, data.num_frames, data.height, data.width, config.seed, data.split, noise
    )


def corpus_captions(config) -> list[str]:
    """Every caption the trainer may show: the original caption of every clip, the dense and
    short captions of the labelled ones (scenes only, nothing rendered)."""
    data, noise = config.data, AltTextNoise(**config.data.alt_text)
    captions = []
    for index in range(data.num_clips):
        scene = sample_scene(
            np.random.default_rng((config.seed, index)), data.num_frames, data.split
        )
        captions.append(original_caption(scene, config.seed, index, noise))
        if is_labelled(config.seed, index, data.labelled_fraction):
            captions += [dense_caption(scene), short_caption(scene)]
    return captions


def labelled_indices(config) -> np.ndarray:
    data = config.data
    chosen = [
        i for i in range(data.num_clips) if is_labelled(config.seed, i, data.labelled_fraction)
    ]
    if not chosen:
        raise ValueError(
            f"no labelled clips among {data.num_clips} at labelled_fraction "
            f"{data.labelled_fraction}; raise either"
        )
    return np.array(chosen)


def _augmented(video, scene: ShapesScene, tracks, rng):
    """The clip mirrored left-right and/or played backwards, its scene and object centres
    (O, T, 2) following. Triangles point up, so a left-right mirror keeps them; an up-down one
    would not."""
    objects = scene.objects
    if rng.random() < 0.5:
        video = video[:, :, ::-1]
        tracks = tracks * np.array([1.0, -1.0]) + np.array([0.0, video.shape[2]])
        objects = [
            o.__class__(o.colour, o.shape, o.size, MIRRORED.get(o.motion, o.motion))
            for o in objects
        ]
    if rng.random() < 0.5:
        video, tracks = video[::-1], tracks[:, ::-1]
        objects = [
            o.__class__(o.colour, o.shape, o.size, REVERSED.get(o.motion, o.motion))
            for o in objects
        ]
    return np.ascontiguousarray(video), ShapesScene(tuple(objects), scene.background), tracks


def in_reading_order(scene: ShapesScene, tracks) -> ShapesScene:
    """The scene with its objects left to right (then top to bottom) in the first frame.

    A caption that names objects in a fixed visual order tells the decoder where to look for
    each sentence: the first is the leftmost object, the second the other one. In scene order
    it must first pick an object and then keep reading the same one, and in two-object clips
    it binds one object's shape or motion to the other's colour (experiments/captioner/NOTES.md,
    v8)."""
    first = np.asarray(tracks)[:, 0]  # (O, 2) as (y, x)
    order = sorted(range(len(scene.objects)), key=lambda i: (first[i, 1], first[i, 0]))
    return ShapesScene(tuple(scene.objects[i] for i in order), scene.background)


class CaptionExamples:
    """A grain random_map: clip → {"video", "tokens"} for the phase. Fine-tuning swaps most
    clips for a random labelled one, captioned densely or briefly."""

    def __init__(self, config, phase: str, vocab: CaptionVocab, source, labelled):
        self.config, self.phase, self.vocab = config, phase, vocab
        self.source, self.labelled = source, labelled

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        data, length = self.config.data, self.config.model.max_length
        recolour = rng.random() < data.recolour_share
        if self.phase == "pretrain" or rng.random() < data.finetune_original_share:
            caption, mode = example["caption_original"], "original"
            video = self._recoloured(example["index"], rng) if recolour else example["video"]
        else:
            index = int(self.labelled[rng.integers(len(self.labelled))])
            scene, tracks = self._scene_tracks(index)
            colours = random_object_colours(scene, rng) if recolour else None
            video = render_tracks(scene, tracks, *self._canvas, colours)
            if data.augment:
                video, scene, tracks = _augmented(video, scene, tracks, rng)
            if data.object_order == "reading":
                scene = in_reading_order(scene, tracks)
            mode = "dense" if rng.random() < 0.5 else "short"
            caption = dense_caption(scene) if mode == "dense" else short_caption(scene)
        tokens = self.vocab.encode([caption], [mode], length)[0]
        unscored = self.vocab.word_positions(caption, COLOURS, length) & recolour
        video = video[frame_indices(len(video), self.config.model.frames)]
        # (frames, H, W, 3), (max_length,), (max_length,)
        return {"video": video, "tokens": tokens, "unscored": unscored}

    @property
    def _canvas(self) -> tuple[int, int]:
        return self.source.height, self.source.width

    def _scene_tracks(self, index: int):
        source = self.source
        return clip_scene_tracks(
            source.seed, index, source.num_frames, source.height, source.width, source.split
        )

    def _recoloured(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Clip `index` drawn again with its objects in random off-palette colours."""
        scene, tracks = self._scene_tracks(index)
        return render_tracks(scene, tracks, *self._canvas, random_object_colours(scene, rng))


def phase_iterator(config, phase, vocab, source, labelled):
    transform = CaptionExamples(config, phase, vocab, source, labelled)
    seed = config.seed + PHASES.index(phase)
    return batch_iterator(source, config.batch_size, seed, transform, config.data.threads)


class PhasedBatches:
    """The batches of the phase a step is in: a fresh iterator when pre-training ends, and in
    a resumed run the checkpoint's iterator position (data_state) if it is of the same phase."""

    def __init__(self, config, vocab: CaptionVocab, source, labelled, data_state: dict | None):
        self.config, self.vocab, self.source, self.labelled = config, vocab, source, labelled
        self.resumed = data_state
        self.phase, self.iterator = None, None

    def next(self, step: int) -> dict:
        """The batch of step (counted from 1)."""
        phase = PHASES[int(step > self.config.pretrain_steps)]
        if phase != self.phase:
            self.phase = phase
            self.iterator = phase_iterator(
                self.config, phase, self.vocab, self.source, self.labelled
            )
            if self.resumed is not None and self.resumed["phase"] == phase:
                self.iterator.set_state(self.resumed["iterator"])
        return next(self.iterator)

    def get_state(self) -> dict:
        return {"phase": self.phase, "iterator": self.iterator.get_state()}


# ---- The pure train step ----------------------------------------------------------------------


def train_step(state: optim.TrainState, batch: dict, rng, *, model, optimizer, config):
    """(state, batch, rng) → (state, metrics); the rng drives the decoder's word dropout."""
    rng = jax.random.fold_in(rng, state.step)
    video = batch["video"].astype(jnp.float32) / 127.5 - 1.0  # (B, T, H, W, 3)
    loss, grads = jax.value_and_grad(caption_loss)(
        state.params, model, video, batch["tokens"], rng, batch["unscored"]
    )
    new_state = state.apply_gradients(grads, optimizer, config.optim.ema_decay)
    metrics = {
        "loss": loss,
        "learning_rate": optim.learning_rate_schedule(config.optim)(state.step),
        **optim.nonfinite_counts(new_state.opt_state),
    }
    return new_state, metrics


# ---- Evaluation -------------------------------------------------------------------------------


def heldout_accuracy(captioner: Captioner, config, mode: str = "dense", beam: int = 1) -> dict:
    """Accuracy on clips of the held-out colour-shape pairs, from a seed training never used."""
    data = config.data
    source = ShapesSource(
        config.eval_clips,
        data.num_frames,
        data.height,
        data.width,
        config.seed + HELDOUT_SEED_OFFSET,
        "heldout",
    )
    items = [source[i] for i in range(len(source))]
    captions = []
    for start in range(0, len(items), 64):
        videos = np.stack([item["video"] for item in items[start : start + 64]])
        captions += captioner.caption(videos, mode, beam)
    return caption_accuracy(captions, [parse_dense_caption(item["caption"]) for item in items])


# ---- Set-up (the loop itself is soraj/step_loop.py) -------------------------------------------


VOCAB_FILE = "vocab.json"
HELDOUT_LOG = "heldout_accuracy.jsonl"


def run_vocabulary(config, workdir: Path, manager) -> CaptionVocab:
    """The run's vocabulary, in WORKDIR/vocab.json: a run resumed from a checkpoint keeps the
    one its checkpoints were trained with; any other start (a new run, or one whose earlier
    start saved no checkpoint) builds it from this config's corpus and writes it afresh,
    atomically, so a changed corpus never meets an old vocabulary."""
    path, latest_step = workdir / VOCAB_FILE, manager.latest_step()
    if latest_step is not None:
        if not path.is_file():
            raise ValueError(
                f"{manager.directory} holds checkpoints up to step {latest_step}, "
                f"but {path}, the vocabulary they were trained with, is missing; restore it or "
                "start the run in a new workdir"
            )
        return CaptionVocab.from_dict(json.loads(path.read_text()))
    vocab = CaptionVocab.from_captions(corpus_captions(config))
    workdir.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(vocab.to_dict()))
    os.replace(staging, path)  # a crash leaves the old file or the new one, never half of one
    return vocab


def captioner_config(config, vocab: CaptionVocab) -> CaptionerConfig:
    fields = config.model.to_dict()
    unfed = vocab.piece_ids(fields.pop("unfed_words", ()))
    return CaptionerConfig(**fields, vocab_size=vocab.size, unfed_ids=unfed)


def prepare(config: ml_collections.ConfigDict, workdir: str | Path) -> step_loop.TrainingRun:
    """Everything before the first step: checks, vocabulary, model and the restored or fresh
    state. Bad input is refused here, before any step runs."""
    for phase in PHASES:
        step_loop.check_every(f"{phase}_steps", config[f"{phase}_steps"], why="steps of the phase")
    total = config.pretrain_steps + config.finetune_steps
    # The captioner makes no samples (its export's held-out accuracy is its measure).
    schedule = step_loop.Schedule.from_config(
        config, total, sample_every=0, total_name="pretrain_steps + config.finetune_steps"
    )
    source, labelled = training_source(config), labelled_indices(config)  # checks the config
    workdir = Path(workdir)
    manager = checkpoint.manager_from_config(config, workdir)
    vocab = run_vocabulary(config, workdir, manager)
    model_config = captioner_config(config, vocab)
    model = CaptionModel(model_config)
    optimizer = optim.make_optimizer(config.optim)

    def init_state(rng):
        init_rng, state_rng = jax.random.split(rng)
        return optim.TrainState.create(init_captioner(model_config, init_rng), optimizer, state_rng)

    rng = jax.random.key(config.seed)
    state, data_state, start_step = checkpoint.restore_or_init(manager, init_state, rng, None)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(
        f"captioner {n_params / 1e6:.2f}M params, vocabulary {vocab.size} word pieces, "
        f"{len(labelled)} labelled of {len(source)} clips; "
        f"{'resuming at step ' + str(start_step) if start_step else 'starting'}; workdir {workdir}"
    )
    step_fn = jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, config=config),
        donate_argnums=0,
    )
    batches = PhasedBatches(config, vocab, source, labelled, data_state)

    def next_step(step, state):
        batch = batches.next(step)
        state, metrics = step_fn(state, batch, rng)
        return state, metrics, batch

    def export(step, state):
        exported = export_captioner(
            workdir / "export", state.ema_params, model_config, vocab, {"step": step}
        )
        if config.eval_clips and batches.phase == "finetune":
            accuracy = heldout_accuracy(Captioner.load(exported), config)
            with open(workdir / HELDOUT_LOG, "a") as log:
                log.write(json.dumps({"step": step, **accuracy}) + "\n")
            tqdm.tqdm.write(f"step {step}: held-out dense exact match {accuracy['exact']:.3f}")

    hooks = step_loop.StepHooks(
        step=next_step,
        log=lambda metrics, batch: (
            dict(metrics, phase=PHASES.index(batches.phase)),
            len(batch["tokens"]),
        ),
        data_state=batches.get_state,
        metadata=lambda step: {"step": step},
        export=export,
    )
    run = step_loop.TrainingRun(
        config,
        workdir,
        schedule,
        hooks,
        manager,
        state,
        start_step,
        name="captioner",
        progress="captioner",
    )
    # As metrics.jsonl (step_loop): accuracies logged past the restored step are run again.
    fault_tolerance.trim_metrics(workdir, start_step, HELDOUT_LOG)
    return run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path):
    """Trains pretrain_steps + finetune_steps steps, resuming from WORKDIR/checkpoints; on
    SIGTERM it saves at the next step and raises fault_tolerance.Preempted (exit code 75)."""
    return prepare(config, workdir).train()
