"""DiT trainer: rectified flow on VAE latents of Shapes clips, `train_and_evaluate(config,
workdir)`. The step is a pure function of (state, packed batch, rng)."""

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax

from soraj import checkpoint, optim, sharding
from soraj.data.pipeline import batch_iterator, caption_dropout
from soraj.data.shapes import ShapesSource
from soraj.diffusion.objective import flow_matching_loss
from soraj.diffusion.timesteps import per_segment_timesteps
from soraj.generate import Generator, init_params, write_video_files
from soraj.metric_writer import MetricWriter
from soraj.models import patching
from soraj.models.conditioning import TextConfig, segment_inputs, text_states
from soraj.models.dit import DiT, DiTConfig
from soraj.models.latent_codec import LatentCodec

# ---- The pure train step --------------------------------------------------------------------


def dit_loss(params, batch: dict, rng, *, dit: DiT, text: TextConfig, diffusion):
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
    )  # (B, L)
    noise = jax.random.normal(noise_rng, batch["latents"].shape)  # (B, L, P)
    states, mask = text_states(text, params.get("text"), batch["text"], batch["text_mask"])

    def denoise(x_t, t):
        return dit.apply(
            {"params": params["dit"]}, x_t, t, batch["coords"], batch["segment_ids"], states, mask
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


def train_step(state: optim.TrainState, batch: dict, rng, *, dit, text, optimizer, config):
    """(state, batch, rng) → (state, metrics); pure, jitted once with donation."""
    rng = jax.random.fold_in(rng, state.step)
    loss_fn = functools.partial(dit_loss, dit=dit, text=text, diffusion=config.diffusion)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    new_state = state.apply_gradients(grads, optimizer, config.optim.ema_decay)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),  # before clipping
        "learning_rate": optim.learning_rate_schedule(config.optim)(state.step),
    }
    return new_state, metrics


# ---- Building packed batches ----------------------------------------------------------------


def latents_to_packed(latents, patch_size) -> dict:
    """(B, T', H', W', C) latents → the packed batch of DESIGN.md §4 with one sample per row."""
    tokens, coords = jax.vmap(lambda z: patching.patchify(z, patch_size))(latents)  # (B, N, P)
    b, n = tokens.shape[:2]
    grid = patching.grid_shape(latents.shape[1:4], patch_size)
    return {
        "latents": tokens,
        "coords": coords,
        "segment_ids": jnp.ones((b, n), jnp.int32),
        "cond_mask": jnp.zeros((b, n), bool),
        "grid": jnp.broadcast_to(jnp.asarray(grid, jnp.int32), (b, 1, 3)),
    }


class BatchBuilder:
    """Host batches of clips + captions → packed device batches (VAE encode on the fly)."""

    def __init__(self, codec: LatentCodec, patch_size, text_encoder, mesh):
        self.codec, self.mesh, self.text_encoder = codec, mesh, text_encoder
        self._encode = jax.jit(lambda p, v: latents_to_packed(codec.encode(p, v), patch_size))

    def __call__(self, host_batch: dict) -> dict:
        captions = [str(c) for c in host_batch["caption"]]
        text, text_mask = segment_inputs(self.text_encoder, captions)  # (B, 1, M, ...)
        video = sharding.shard_batch({"video": host_batch["video"]}, self.mesh)["video"]
        packed = self._encode(self.codec.params, video)
        packed.update(sharding.shard_batch({"text": text, "text_mask": text_mask}, self.mesh))
        return packed


# ---- Export and samples ---------------------------------------------------------------------


def export(workdir: Path, dit: DiT, state, config, text: TextConfig, vae_dir: Path) -> Path:
    """WORKDIR/export/{dit,vae}: EMA params + config, with the VAE it was trained on, so the
    folder is a complete generation bundle."""
    stored = {
        "kind": "dit",
        "dit_config": dataclasses.asdict(dit.config),
        "text": dataclasses.asdict(text),
        "trained_on": json.loads(config.data.to_json_best_effort()),
        "sample": json.loads(config.sample.to_json_best_effort()),
        "step": int(state.step),
        "code_version": checkpoint.code_version(),
    }
    bundle = workdir / "export"
    checkpoint.export_params(bundle / "dit", state.ema_params, stored)
    if not (bundle / "vae").exists():
        shutil.copytree(vae_dir, bundle / "vae")
    return bundle


def write_sample(workdir: Path, step: int, generator: Generator, config) -> Path:
    data = config.data
    video = generator(
        [config.sample.prompt],
        data.num_frames,
        data.height,
        data.width,
        seed=0,
        steps=config.sample.steps,
        guidance=config.sample.guidance,
    )[0]
    name = f"sample_{step:06d}"
    return Path(
        write_video_files(
            workdir / "samples", name, video, {"prompt": config.sample.prompt, "step": step}
        )["gif"]
    )


# ---- The loop ---------------------------------------------------------------------------------


def resolve_vae(path: str) -> Path:
    if not path:
        raise ValueError(
            "config.vae_checkpoint is empty: give a `soraj train-vae` workdir or "
            "export (--config.vae_checkpoint=...)"
        )
    for candidate in (Path(path), Path(path) / "export", Path(path) / "vae"):
        if checkpoint.is_export(candidate):
            return candidate
    raise ValueError(f"no VAE export at {path} (nor in its export/ or vae/ folder)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path):
    workdir = Path(workdir)
    text = TextConfig(**config.text)
    vae_dir = resolve_vae(config.vae_checkpoint)
    codec = LatentCodec.load(vae_dir)
    data = config.data
    latent = codec.latent_shape(data.num_frames, data.height, data.width)
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
            dtype=config.model.dtype,
        )
    )
    patching.grid_shape(latent[:3], dit.config.patch_size)  # validates divisibility early
    mesh = sharding.make_mesh()
    optimizer = optim.make_optimizer(config.optim)
    source = ShapesSource(
        data.num_clips, data.num_frames, data.height, data.width, seed=config.seed, split=data.split
    )
    iterator = batch_iterator(
        source, config.batch_size, config.seed, caption_dropout(data.caption_dropout)
    )

    def init_state(rng):
        init_rng, state_rng = jax.random.split(rng)
        return optim.TrainState.create(init_params(dit, text, init_rng), optimizer, state_rng)

    rng = jax.random.key(config.seed)
    manager = checkpoint.make_manager(workdir, config.keep_checkpoints, config.save_every)
    state, data_state, start_step = checkpoint.restore_or_init(
        manager, init_state, rng, sharding.replicated(mesh)
    )
    if data_state is not None:
        iterator.set_state(data_state)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"DiT {n_params / 1e6:.2f}M params; latents {latent}; workdir {workdir}")

    text_encoder = text.host_encoder()
    build_batch = BatchBuilder(codec, dit.config.patch_size, text_encoder, mesh)
    step_fn = jax.jit(
        functools.partial(train_step, dit=dit, text=text, optimizer=optimizer, config=config),
        donate_argnums=0,
    )
    writer = MetricWriter(workdir, config.total_steps, start_step, "train")
    for step in range(start_step, config.total_steps):
        batch = build_batch(next(iterator))
        state, metrics = step_fn(state, batch, rng)
        writer.advance()
        done = step + 1
        if done % config.log_every == 0 or done == config.total_steps:
            writer.write(done, jax.device_get(metrics), config.batch_size)
        if done % config.save_every == 0 or done == config.total_steps:
            metadata = checkpoint.training_metadata(config, mesh)
            checkpoint.save_train_state(
                manager, done, state, iterator.get_state(), metadata, force=True
            )
            export(workdir, dit, state, config, text, vae_dir)
        if done % config.sample_every == 0 or done == config.total_steps:
            generator = Generator(codec, dit, state.ema_params, text, text_encoder)
            print(f"sample written to {write_sample(workdir, done, generator, config)}")
    manager.wait_until_finished()
    writer.close()
    print(f"DiT export written to {workdir / 'export'}")
    return state
