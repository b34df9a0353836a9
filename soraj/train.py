"""DiT trainer: rectified flow on VAE latents of clips at their native sizes, packed into rows
(soraj/data/packed_pipeline.py; the trainer's data in soraj/dit_data.py),
`train_and_evaluate(config, workdir)`. The step is a pure function of (state, packed batch,
rng)."""

import copy
import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.experimental import multihost_utils

from soraj import checkpoint, distributed, exports, fault_tolerance, optim, sharding, step_loop
from soraj.data.data_shards import all_shard_states
from soraj.data.frame_masks import MASK_TYPES, MaskCurriculum
from soraj.diffusion.objective import flow_matching_loss
from soraj.diffusion.timesteps import TimeShift, per_segment_timesteps
from soraj.dit_data import check_fps, host_batch_metrics, training_data
from soraj.generate import Generator, init_params
from soraj.models import patching
from soraj.models.conditioning import TextConfig, text_states
from soraj.models.dit import DiT, DiTConfig
from soraj.models.latent_codec import LatentCodec
from soraj.video_files import write_video_files

# ---- The pure train step --------------------------------------------------------------------


def dit_loss(params, batch: dict, rng, *, dit: DiT, text: TextConfig, diffusion, window=None):
    t_rng, noise_rng = jax.random.split(rng)
    max_segments = batch["grid"].shape[1]
    t = per_segment_timesteps(
        t_rng,
        batch["segment_ids"],
        max_segments,
        batch["cond_mask"],
        mean=diffusion.timestep_mean,
        std=diffusion.timestep_std,
        shift_by_tokens=diffusion.shift_by_tokens,
        shift=diffusion.shift,
        base_tokens=diffusion.base_tokens,
        base_shift=diffusion.base_shift,
        max_tokens=diffusion.max_tokens,
        max_shift=diffusion.max_shift,
        cond_t=batch.get("cond_t"),
    )  # (B, L)
    noise = jax.random.normal(noise_rng, batch["latents"].shape)  # (B, L, P)
    if dit.config.conditioning == "class":
        conditioning = {"labels": batch["labels"]}  # (B, S)
    else:
        states, mask = text_states(text, params.get("text"), batch["text"], batch["text_mask"])
        conditioning = {"text": states, "text_mask": mask}

    def denoise(x_t, t):
        return dit.apply(
            {"params": params["dit"]},
            x_t,
            t,
            batch["coords"],
            batch["segment_ids"],
            **conditioning,
            max_segment_tokens=window,
        )

    return flow_matching_loss(
        denoise,
        batch["latents"],
        noise,
        t,
        batch["segment_ids"],
        batch["cond_mask"],
        max_segments,
        diffusion.weighting,
    )


def loss_by_mask_type(aux: dict, batch: dict) -> dict:
    """Per mask type (frame_masks.MASK_TYPES): the summed per-sample loss and the sample count
    of this batch, (T,) each; batches without mask types give none."""
    if "mask_type" not in batch:
        return {}
    of_type = batch["mask_type"][..., None] == jnp.arange(len(MASK_TYPES))  # (B, S, T)
    of_type &= aux["segment_valid"][..., None]
    per_sample = aux["loss_per_segment"][..., None]  # (B, S, 1)
    return {
        "mask_loss_sum": jnp.sum(jnp.where(of_type, per_sample, 0.0), axis=(0, 1)),  # (T,)
        "mask_count": jnp.sum(of_type, axis=(0, 1)),  # (T,)
    }


def mask_type_metrics(metrics: dict) -> dict:
    """The logged form of loss_by_mask_type: loss_<type> for each type present this step."""
    metrics = dict(metrics)
    sums, counts = metrics.pop("mask_loss_sum", None), metrics.pop("mask_count", None)
    if sums is None:
        return metrics
    for name, total, count in zip(MASK_TYPES, sums, counts, strict=True):
        if count:
            metrics[f"loss_{name}"] = float(total) / int(count)
    return metrics


def train_step(state: optim.TrainState, batch: dict, rng, *, dit, text, optimizer, config):
    """(state, batch, rng) → (state, metrics); pure, jitted once with donation."""
    rng = jax.random.fold_in(rng, state.step)
    # No packed sample has more than token_budget tokens (packed_pipeline checks it), so
    # self-attention works in windows of 3 × token_budget rather than over whole rows.
    loss_fn = functools.partial(
        dit_loss,
        dit=dit,
        text=text,
        diffusion=config.diffusion,
        window=config.data.token_budget,
    )
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    new_state = state.apply_gradients(grads, optimizer, config.optim.ema_decay)
    metrics = {
        "loss": loss,
        **loss_by_mask_type(aux, batch),
        "grad_norm": optax.tree.norm(grads),  # before clipping
        "learning_rate": optim.learning_rate_schedule(config.optim)(state.step),
        **optim.nonfinite_counts(new_state.opt_state),
    }
    return new_state, metrics


# ---- Export and samples ---------------------------------------------------------------------


def export(
    workdir: Path, dit: DiT, state, config, text: TextConfig, vae_dir: Path, class_names=()
) -> Path:
    """WORKDIR/export/{dit,vae}: EMA params + config (and a class model's class names), with
    the VAE it was trained on, so the folder is a complete generation bundle. Every process
    calls it (the params are gathered across hosts); process 0 writes."""
    ema_params, step = state.ema_params, state.step
    if jax.process_count() > 1:
        ema_params, step = multihost_utils.process_allgather((ema_params, step), tiled=True)
    bundle = workdir / "export"
    if not distributed.is_primary():
        return bundle
    stored = {
        "kind": "dit",
        "dit_config": dataclasses.asdict(dit.config),
        "text": dataclasses.asdict(text),
        "trained_on": json.loads(config.data.to_json_best_effort()),
        "sample": json.loads(config.sample.to_json_best_effort()),
        # Sampling shifts its time grid as training shifted t (Generator.time_shift).
        "time_shift": dataclasses.asdict(TimeShift.from_config(config.diffusion)),
        "step": int(step),
        "code_version": checkpoint.code_version(),
    }
    if dit.config.conditioning == "class":
        stored["classes"] = list(class_names)
    exports.write_export(bundle / "dit", ema_params, stored)
    copy_vae(vae_dir, bundle / "vae")
    return bundle


def copy_vae(vae_dir: Path, target: Path) -> None:
    """The bundle's VAE: vae_dir copied to target once, through target.tmp and a rename, so a
    crash mid-copy leaves no partial VAE where the bundle's loader would find it."""
    if target.exists():
        return
    staging = target.with_name(target.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)  # a copy a crash cut short
    shutil.copytree(vae_dir, staging)
    os.replace(staging, target)


def write_sample(workdir: Path, step: int, generator: Generator, config) -> Path:
    data = config.data
    # A class model samples its first class unless config.sample.prompt names one of them.
    prompt = config.sample.prompt
    if generator.class_names and prompt not in generator.class_names:
        prompt = generator.class_names[0]
    video = generator(
        [prompt],
        data.num_frames,
        data.height,
        data.width,
        seed=0,
        steps=config.sample.steps,
        guidance=config.sample.guidance,
    )[0]
    name = f"sample_{step:06d}"
    settings = {"prompt": prompt, "step": step}
    return Path(write_video_files(workdir / "samples", name, video, settings, fps=data.fps)["gif"])


# ---- Set-up (the loop itself is soraj/step_loop.py) -------------------------------------------


def resolve_vae(path: str) -> Path:
    """config.vae_checkpoint's VAE export, looked for as exports.find_export looks."""
    if not path:
        raise ValueError(
            "config.vae_checkpoint is empty: give a `soraj train-vae` workdir or "
            "export (--config.vae_checkpoint=...)"
        )
    return exports.find_export(path, "vae")


def make_dit(config, codec: LatentCodec, text: TextConfig) -> DiT:
    """The DiT of config.model for this VAE's latents of config.data's clips."""
    data = config.data
    latent = codec.latent_shape(data.num_frames, data.height, data.width)
    # Per-frame t (the curriculum's "independent" type) can give a sample as many distinct t
    # as it has patch frames; every other type gives at most two (drawn and given).
    masks = MaskCurriculum.from_config(data.masks) if "masks" in data else MaskCurriculum()
    longest = codec.latent_shape(data.max_frames, data.height, data.width)[0]
    per_frame = dict(masks.shares).get("independent", 0.0) > 0
    timesteps_per_sample = max(2, longest // config.model.patch_size[0]) if per_frame else 2
    dit = DiT(
        DiTConfig(
            width=config.model.width,
            depth=config.model.depth,
            num_heads=config.model.num_heads,
            mlp_ratio=config.model.mlp_ratio,
            patch_size=tuple(config.model.patch_size),
            latent_channels=latent[3],
            text_width=text.width,
            attention_backend=config.model.attention_backend,
            context_parallel=config.model.context_parallel,
            dtype=config.model.dtype,
            conditioning=config.model.conditioning,
            num_classes=config.model.num_classes if config.model.conditioning == "class" else 0,
            scan_blocks=config.model.scan_blocks,
            remat=config.model.remat,
            modulation=config.model.modulation,
            timesteps_per_sample=timesteps_per_sample,
        )
    )
    patching.grid_shape(latent[:3], dit.config.patch_size)  # validates divisibility early
    return dit


def prepare(config: ml_collections.ConfigDict, workdir: str | Path) -> step_loop.TrainingRun:
    """Everything before the first step: checks, model, data and the restored or fresh state.
    Bad input is refused here, before any step runs. The run works on a copy of config whose
    data.fps is the training clips' resolved frame rate (dit_data.training_fps): what
    WORKDIR/config.json, the checkpoints' metadata and the export's trained_on record."""
    schedule = step_loop.Schedule.from_config(config, config.total_steps, config.sample_every)
    check_fps(config.data)  # cheap checks first; the source's own rate once it is open
    config = copy.deepcopy(config)
    distributed.initialize(config.distributed)
    workdir = Path(workdir)
    text = TextConfig(**config.text)
    vae_dir = resolve_vae(config.vae_checkpoint)
    codec = LatentCodec.load(vae_dir)
    dit = make_dit(config, codec, text)
    latent = codec.latent_shape(config.data.num_frames, config.data.height, config.data.width)
    mesh = sharding.make_mesh(config.mesh)
    optimizer = optim.make_optimizer(config.optim)
    iterator, build_batch = training_data(config, codec, vae_dir, text, dit.config.patch_size, mesh)
    config.data.fps = build_batch.fps

    def init_state(rng):
        init_rng, state_rng = jax.random.split(rng)
        return optim.TrainState.create(init_params(dit, text, init_rng), optimizer, state_rng)

    rng = jax.random.key(config.seed)
    manager = checkpoint.manager_from_config(config, workdir)
    state, state_shardings, data_state, start_step = fault_tolerance.resume_or_start(
        manager, init_state, rng, mesh, sharding.DIT_RULES
    )
    if data_state is not None:
        iterator.set_state(data_state)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(
        f"DiT {n_params / 1e6:.2f}M params; latents {latent}; mesh {dict(mesh.shape)}; "
        f"{'resuming at step ' + str(start_step) if start_step else 'starting'}; workdir {workdir}"
    )

    step_fn = sharding.jit_train_step(
        functools.partial(train_step, dit=dit, text=text, optimizer=optimizer, config=config),
        state_shardings,
        mesh,
        sharding.DIT_RULES,
    )

    def next_step(step, state):
        host_batch = next(iterator)
        state, metrics = step_fn(state, build_batch(host_batch), rng)
        return state, metrics, host_batch

    def logged(metrics, host_batch):
        metrics = mask_type_metrics(metrics)
        metrics.update(host_batch_metrics(host_batch))
        return metrics, int(metrics["samples"])

    hooks = step_loop.StepHooks(
        step=next_step,
        log=logged,
        data_state=lambda: all_shard_states(iterator.get_state()),
        metadata=lambda step: checkpoint.training_metadata(config, mesh),
        export=lambda step, state: export(
            workdir, dit, state, config, text, vae_dir, build_batch.class_names
        ),
        sample=lambda step, state, host_batch: write_training_sample(
            workdir, step, codec, dit, state, text, build_batch, config
        ),
    )
    return step_loop.TrainingRun(
        config, workdir, schedule, hooks, manager, state, start_step, name="DiT", progress="train"
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path):
    """Trains config.total_steps steps, resuming from WORKDIR/checkpoints. On SIGTERM it saves
    at the next step and raises fault_tolerance.Preempted (exit code 75); run it again to go
    on. Multi-host: every process runs this with the same config (README, "Scale-out")."""
    return prepare(config, workdir).train()


def write_training_sample(workdir, step, codec, dit, state, text, build_batch, config):
    """A sample video of the EMA model (step_loop calls it in single-process runs only)."""
    generator = Generator(codec, dit, state.ema_params, text, None, build_batch.class_names)
    if dit.config.conditioning == "text":
        # Cached text states leave no encoder loaded; sampling needs one for its prompt.
        build_batch.text_encoder = build_batch.text_encoder or text.host_encoder()
        generator.text_encoder = build_batch.text_encoder
    print(f"sample written to {write_sample(workdir, step, generator, config)}")
