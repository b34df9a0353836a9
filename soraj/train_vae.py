"""VAE trainer: pixel reconstruction + KL, and an optional 3D PatchGAN switched on after a set
step, on batches of several clip shapes (videos and images) from Shapes or a video folder;
`train_and_evaluate(config, workdir)`. A deliberate sibling of train.py, not a subclass."""

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from soraj import checkpoint, distributed, fault_tolerance, optim, sharding, step_loop, vae_losses
from soraj.data.clip_shapes import clip_shapes, make_iterators
from soraj.data.shapes import FPS as SHAPES_FPS
from soraj.models import discriminator as disc
from soraj.models.latent_codec import check_frame_fold, video_to_model_range
from soraj.models.vae import VAE_PRESETS, VideoVAE, check_video_shape
from soraj.vae_export import export, jitted_codec, sample_rate, write_reconstructions

SOURCES = ("shapes", "video_folder")

# ---- Config checks ------------------------------------------------------------------------------


def check_config(config, shapes, model: VideoVAE, discriminator) -> None:
    """Every check that needs no data or weights, so bad input fails before any work."""
    if not shapes:
        raise ValueError("config.data.clip_shapes is empty: give at least one clip shape")
    names = [shape.name for shape in shapes]
    if len(set(names)) != len(names):
        raise ValueError(f"config.data.clip_shapes repeats a (frames, height, width): {names}")
    for shape in shapes:
        if shape.batch_size < 1:
            raise ValueError(f"clip shape {shape.name} has batch size {shape.batch_size}; need ≥ 1")
        check_video_shape(model.config, shape.frames, shape.height, shape.width)
        if discriminator is not None:
            disc.check_frame_size(discriminator.config, shape.height, shape.width)
    if config.data.source not in SOURCES:
        raise ValueError(f"unknown config.data.source {config.data.source!r}; allowed: {SOURCES}")
    if config.data.source == "video_folder" and not config.data.folder:
        raise ValueError(
            "config.data.folder is not set: the video_folder source needs "
            "--config.data.folder=DIR, a folder with captions.jsonl"
        )
    allowed = vae_losses.PIXEL_LOSSES
    if config.loss.pixel_loss not in allowed:
        raise ValueError(
            f"unknown config.loss.pixel_loss {config.loss.pixel_loss!r}; allowed: {allowed}"
        )
    start = config.loss.gan_start_step
    if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
        raise ValueError(f"config.loss.gan_start_step must be None or an int ≥ 0, got {start!r}")
    check_frame_fold(config.latent_frame_fold)  # the export's; training never folds


# ---- Train state -------------------------------------------------------------------------------


class VAETrainState(optim.TrainState):
    """The VAE's TrainState plus the discriminator's params and optimizer state (None without
    a GAN)."""

    disc_params: Any = None
    disc_opt_state: Any = None


# ---- The pure train step -----------------------------------------------------------------------


def generator_gradients(
    params, disc_params, videos, rngs, gan_active, *, model, discriminator, loss_config, names
):
    """(VAE grads, reconstructions, metrics) from one forward pass. Its pullback maps cotangents
    of the outputs to param gradients; for the adaptive weight only the decoder's last layer
    is kept, and XLA drops the rest of those two pullbacks, but only outside lax.cond (inside
    a branch it ran them whole, measured on CPU), so only the discriminator sits in the cond."""

    def reconstruct(p):
        return {n: model.apply({"params": p}, videos[n], sample_rng=rngs[n]) for n in names}

    outputs, pullback = jax.vjp(reconstruct, params)
    objective = jax.value_and_grad(vae_losses.reconstruction_objective, has_aux=True)
    (loss, metrics), rec_cotangent = objective(outputs, videos, names, loss_config)
    if discriminator is None:
        (grads,) = pullback(rec_cotangent)
        return grads, {n: outputs[n][0] for n in names}, {"loss": loss, **metrics}

    def with_gan(_):
        adversarial = jax.value_and_grad(vae_losses.adversarial_objective)
        return adversarial(outputs, disc_params, discriminator, names)

    def without_gan(_):  # the discriminator is not run at all
        return jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, outputs)

    adv_loss, adv_cotangent = jax.lax.cond(gan_active, with_gan, without_gan, None)
    last_layer = lambda cotangent: vae_losses.decoder_last_layer(pullback(cotangent)[0])  # noqa: E731
    on = gan_active.astype(jnp.float32)
    weight = on * vae_losses.adaptive_gan_weight(
        last_layer(rec_cotangent), last_layer(adv_cotangent), loss_config.adaptive_weight_max
    )
    gan_weight = loss_config.gan_weight * weight  # 0 before the start step: no GAN term
    combined = jax.tree.map(lambda r, a: r + gan_weight * a, rec_cotangent, adv_cotangent)
    (grads,) = pullback(combined)
    metrics.update(
        reconstruction=loss,
        adversarial=adv_loss,
        adaptive_weight=weight,
        gan_weight=gan_weight,
        gan_active=on,
    )
    return (
        grads,
        {n: outputs[n][0] for n in names},
        {"loss": loss + gan_weight * adv_loss, **metrics},
    )


def discriminator_update(
    disc_params,
    disc_opt_state,
    videos,
    reconstructions,
    active,
    *,
    discriminator,
    disc_optimizer,
    names,
):
    """One hinge-loss step of the discriminator on real clips against reconstructions, taken
    only when `active`. The gradients are computed either way and only the optimizer update
    sits in lax.cond: inside a cond branch XLA:CPU ran the weight-gradient convolutions far
    slower (minutes per step on the real-footage batches)."""

    def objective(dp):
        losses, real_means, fake_means = [], [], []
        for n in names:
            fake = jax.lax.stop_gradient(reconstructions[n])
            # Real and fake in one batch: GroupNorm works per sample, so nothing mixes.
            logits = discriminator.apply({"params": dp}, jnp.concatenate([videos[n], fake]))
            real_logits, fake_logits = jnp.split(logits, 2)
            losses.append(disc.hinge_discriminator_loss(real_logits, fake_logits))
            real_means.append(real_logits.mean())
            fake_means.append(fake_logits.mean())
        aux = {
            "disc_real_logits": jnp.mean(jnp.stack(real_means)),
            "disc_fake_logits": jnp.mean(jnp.stack(fake_means)),
        }
        return jnp.mean(jnp.stack(losses)), aux

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(disc_params)

    def update(_):
        updates, opt_state = disc_optimizer.update(grads, disc_opt_state, disc_params)
        return optax.apply_updates(disc_params, updates), opt_state

    keep = lambda _: (disc_params, disc_opt_state)  # noqa: E731
    disc_params, disc_opt_state = jax.lax.cond(active, update, keep, None)
    on = active.astype(jnp.float32)  # metrics of a discriminator that did not train read 0
    metrics = {"disc_loss": loss, "disc_grad_norm": optax.tree.norm(grads), **aux}
    return disc_params, disc_opt_state, {k: on * v for k, v in metrics.items()}


def train_step(
    state: VAETrainState,
    batch: dict,
    rng,
    *,
    model,
    discriminator,
    optimizer,
    disc_optimizer,
    config,
    names,
):
    """(state, batch, rng) → (state, metrics); pure, jitted once with donation. The GAN switch
    is a traced comparison of the step with config.loss.gan_start_step (lax.cond and a 0/1
    factor), so switching it on recompiles nothing. Before it the generator's loss has no GAN
    term and the discriminator's params and optimizer state stay as they are."""
    rng = jax.random.fold_in(rng, state.step)
    videos = {n: video_to_model_range(batch[n]) for n in names}  # (B, T, H, W, 3) each
    rngs = dict(zip(names, jax.random.split(rng, len(names)), strict=True))
    start = config.loss.gan_start_step
    gan_active = state.step >= (start if start is not None else 0)
    grads, reconstructions, metrics = generator_gradients(
        state.params,
        state.disc_params,
        videos,
        rngs,
        gan_active,
        model=model,
        discriminator=discriminator,
        loss_config=config.loss,
        names=names,
    )
    new_state = state.apply_gradients(grads, optimizer, config.optim.ema_decay)
    if discriminator is not None:
        disc_params, disc_opt_state, disc_metrics = discriminator_update(
            state.disc_params,
            state.disc_opt_state,
            videos,
            reconstructions,
            gan_active,
            discriminator=discriminator,
            disc_optimizer=disc_optimizer,
            names=names,
        )
        new_state = new_state.replace(disc_params=disc_params, disc_opt_state=disc_opt_state)
        metrics.update(disc_metrics)
    # The norm before clipping: what the optimizer was actually handed.
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = optim.learning_rate_schedule(config.optim)(state.step)
    metrics.update(optim.nonfinite_counts(new_state.opt_state))
    return new_state, metrics


# ---- Set-up (the loop itself is soraj/step_loop.py) -------------------------------------------


def prepare(config: ml_collections.ConfigDict, workdir: str | Path) -> step_loop.TrainingRun:
    """Everything before the first step: checks, models, data and the restored or fresh state.
    Bad input is refused here, before any step runs."""
    workdir = Path(workdir)
    schedule = step_loop.Schedule.from_config(config, config.total_steps, config.sample_every)
    if config.preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {config.preset!r}; allowed: {sorted(VAE_PRESETS)}")
    model = VideoVAE(VAE_PRESETS[config.preset])
    discriminator = None
    if config.loss.gan_start_step is not None:
        d = config.discriminator
        discriminator = disc.PatchDiscriminator3D(
            disc.DiscriminatorConfig(d.base_channels, d.num_downsamples, d.max_multiplier, d.dtype)
        )
    shapes = clip_shapes(config)
    check_config(config, shapes, model, discriminator)
    names = tuple(shape.name for shape in shapes)
    distributed.initialize(config.distributed)
    mesh = sharding.make_mesh(config.mesh)
    optimizer = optim.make_optimizer(config.optim)
    disc_optimizer = optim.make_optimizer(config.discriminator.optim)
    iterators = make_iterators(config, shapes)

    def init_state(rng):
        init_rng, state_rng, disc_rng = jax.random.split(rng, 3)
        sample = jnp.zeros((1, shapes[0].frames, shapes[0].height, shapes[0].width, 3))
        # Kernels boxed with logical axis names, so the state is sharded by VAE_RULES.
        params = model.init_boxed(init_rng, sample)["params"]
        state = VAETrainState.create(params, optimizer, state_rng)
        if discriminator is None:
            return state
        disc_params = discriminator.init_boxed(disc_rng, sample)["params"]
        return state.replace(
            disc_params=disc_params, disc_opt_state=disc_optimizer.init(disc_params)
        )

    rng = jax.random.key(config.seed)
    manager = checkpoint.manager_from_config(config, workdir)
    state, state_shardings, data_state, start_step = fault_tolerance.resume_or_start(
        manager, init_state, rng, mesh, sharding.VAE_RULES
    )
    for name, iterator in iterators.items():
        if data_state is not None:
            iterator.set_state(data_state[name])
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    described = ", ".join(f"{s.name} ×{s.batch_size}" for s in shapes)
    gan = "off" if discriminator is None else f"on from step {config.loss.gan_start_step}"
    print(f"VAE {n_params / 1e6:.2f}M params; clips {described}; GAN {gan}; workdir {workdir}")

    step_fn = sharding.jit_train_step(
        functools.partial(
            train_step,
            model=model,
            discriminator=discriminator,
            optimizer=optimizer,
            disc_optimizer=disc_optimizer,
            config=config,
            names=names,
        ),
        state_shardings,
        mesh,
        sharding.VAE_RULES,
    )
    encode, reconstruct = jitted_codec(model)
    samples_per_step = sum(shape.batch_size for shape in shapes)
    stats_batches = []  # the first batches, whose latents give the export's shift and scale

    # The latest batch's clip records ("fps", "path"), whose frame rate a reconstruction GIF of
    # video-folder clips plays at; Shapes clips play at the Shapes world's.
    latest_records = []

    def next_step(step, state):
        items = {name: next(iterator) for name, iterator in iterators.items()}
        host_batch = {name: item["video"] for name, item in items.items()}
        if config.data.source != "shapes":
            latest_records[:] = [{k: item[k] for k in ("fps", "path")} for item in items.values()]
        if len(stats_batches) < config.num_stats_batches:
            stats_batches.append(host_batch)
        state, metrics = step_fn(state, sharding.shard_batch(host_batch, mesh), rng)
        return state, metrics, host_batch

    def write_sample(step, state, host_batch):
        path = workdir / "samples" / f"reconstruction_{step:06d}.gif"
        fps = SHAPES_FPS if config.data.source == "shapes" else sample_rate(latest_records)
        write_reconstructions(path, reconstruct, state.ema_params, host_batch, fps)

    def write_export(step, state):
        # Only a run restored at its last step exports before any step ran (and then trains
        # no more): its statistics come from the batches the iterators give next, as a resumed
        # run's do. Drawing them in any other case would shift the training batches.
        if not stats_batches:
            for _ in range(config.num_stats_batches):
                stats_batches.append({name: next(it)["video"] for name, it in iterators.items()})
        export(workdir, model, state, config, stats_batches, encode)

    hooks = step_loop.StepHooks(
        step=next_step,
        log=lambda metrics, host_batch: (metrics, samples_per_step),
        data_state=lambda: {name: it.get_state() for name, it in iterators.items()},
        metadata=lambda step: checkpoint.training_metadata(config, mesh),
        export=write_export,
        sample=write_sample,
    )
    return step_loop.TrainingRun(
        config,
        workdir,
        schedule,
        hooks,
        manager,
        state,
        start_step,
        name="VAE",
        progress="train-vae",
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path):
    """Trains config.total_steps steps, resuming from WORKDIR/checkpoints; preemption and
    multi-host as train.train_and_evaluate."""
    return prepare(config, workdir).train()
