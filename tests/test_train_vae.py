"""The VAE trainer: losses against closed forms, the adaptive GAN weight against two direct
gradients, the GAN switch, mixed clip shapes, config checks, and exact resume through orbax."""

import contextlib
import json
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental.compilation_cache import compilation_cache
from PIL import Image

from soraj import train_vae
from soraj.configs import vae as vae_configs
from soraj.data.clip_shapes import ClipShape, clip_shapes, make_iterators
from soraj.data.pipeline import batch_iterator
from soraj.data.shapes import ShapesSource
from soraj.data.video_io import write_mp4
from soraj.models import discriminator as disc
from soraj.models.vae import VAE_PRESETS, CausalConv3d, VAEConfig, VideoVAE
from soraj.vae_losses import adaptive_gan_weight, decoder_last_layer, pixel_loss

# The smallest VAE the config allows (ft = 2, fs = 4): compiling is what these tests pay for.
MICRO = "micro-test"
MICRO_CONFIG = VAEConfig(
    base_channels=4,
    channel_multipliers=(1, 1, 1),
    num_res_blocks=0,
    latent_channels=4,
    temporal_downsample=(True, False),
    spatial_downsample=(True, True),
)


def numpy_params(module, *inputs, seed=0, **kwargs):
    """Params of module's shapes filled from numpy: random-number code dominates compile time
    on CPU, and these tests need values, not a particular initialisation."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs, **kwargs)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), jnp.float32), shapes)


# ---- Losses against closed forms ------------------------------------------------------------


def test_hinge_losses_match_closed_form():
    real = jnp.array([2.0, 0.5, -1.0, 1.0])
    fake = jnp.array([-2.0, 0.0, 1.0, -0.5])
    # relu(1 - real) = [0, 0.5, 2, 0] → mean 0.625; relu(1 + fake) = [0, 1, 2, 0.5] → 0.875.
    np.testing.assert_allclose(disc.hinge_discriminator_loss(real, fake), 0.5 * (0.625 + 0.875))
    np.testing.assert_allclose(disc.hinge_generator_loss(fake), -(-2.0 + 0.0 + 1.0 - 0.5) / 4)


def test_pixel_losses_match_closed_form():
    error = jnp.array([0.0, 3e-3, -4e-3])
    l1 = ml_collections.ConfigDict({"pixel_loss": "l1"})
    charbonnier = ml_collections.ConfigDict(
        {"pixel_loss": "charbonnier", "charbonnier_epsilon": 1e-3}
    )
    np.testing.assert_allclose(pixel_loss(error, l1), 7e-3 / 3, rtol=1e-6)
    expected = (1e-3 + np.sqrt(10) * 1e-3 + np.sqrt(17) * 1e-3) / 3  # √(d² + ε²)
    np.testing.assert_allclose(pixel_loss(error, charbonnier), expected, rtol=1e-6)


def test_adaptive_weight_closed_form_and_clipping():
    rec, adv = jnp.full((2, 2), 3.0), jnp.full((4,), 0.5)  # norms 6 and 1
    np.testing.assert_allclose(adaptive_gan_weight(rec, adv, 1e4), 6.0 / (1.0 + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(adaptive_gan_weight(rec, adv, 2.0), 2.0)
    np.testing.assert_allclose(adaptive_gan_weight(rec, jnp.zeros(4), 1e4), 1e4)


# ---- The discriminator --------------------------------------------------------------------------


def test_discriminator_scores_images_and_clips_per_patch():
    model = disc.PatchDiscriminator3D(disc.DiscriminatorConfig(base_channels=4, num_downsamples=2))
    clip = jnp.zeros((2, 5, 16, 24, 3))
    image = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 1, 16, 16, 3)), jnp.float32)

    @jax.jit
    def scores(params):
        apply = lambda x: model.apply({"params": params}, x)  # noqa: E731
        return apply(clip), apply(image), apply(image[:1])

    clip_logits, logits, alone = scores(numpy_params(model, clip))
    chex.assert_shape(clip_logits, (2, 5, 4, 6, 1))
    chex.assert_shape(logits, (3, 1, 4, 4, 1))
    # GroupNorm is per sample: a sample's logits do not depend on the rest of its batch.
    np.testing.assert_allclose(alone, logits[:1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="too small"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 2, 16, 3)))


# ---- The adaptive weight against two direct gradients --------------------------------------------


class ToyEncoder(nn.Module):
    @nn.compact
    def __call__(self, video):  # (B, T, H, W, 3)
        moments = CausalConv3d(4)(video)
        return jnp.split(moments, 2, axis=-1)  # (B, T, H, W, 2) each


class ToyDecoder(nn.Module):
    @nn.compact
    def __call__(self, latents):  # (B, T, H, W, 2)
        return CausalConv3d(3)(nn.silu(CausalConv3d(6)(latents)))  # (B, T, H, W, 3)


class ToyVAE(nn.Module):
    """VideoVAE's interface and decoder layer names at the size of three convs."""

    def setup(self):
        self.encoder, self.decoder = ToyEncoder(), ToyDecoder()

    def __call__(self, video, sample_rng=None):
        mean, logvar = self.encoder(video)
        # Fixed "noise": no random-number code to compile; the sampling path stays the same.
        noise = jnp.cos(jnp.arange(mean.size, dtype=jnp.float32)).reshape(mean.shape)
        return self.decoder(mean + jnp.exp(0.5 * logvar) * noise), mean, logvar


def assert_gradients_close(actual, expected):
    """Float32 gradients summed in another order: each entry's error scales with the largest
    terms summed into its leaf, so the absolute tolerance scales with the leaf's largest entry."""
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6 * float(np.abs(e).max()))


def toy_loss_config():
    return ml_collections.ConfigDict(
        dict(
            pixel_loss="l1",
            pixel_weight=0.1,
            mse_weight=1.0,
            edge_weight=0.5,
            kl_weight=1e-2,
            gan_weight=0.5,
            adaptive_weight_max=1e4,
        )
    )


def test_adaptive_weight_matches_two_direct_gradients():
    names = ("3x8x8", "1x8x8")
    uniform = np.random.default_rng(2).uniform
    videos = {
        "3x8x8": jnp.asarray(uniform(-1, 1, (2, 3, 8, 8, 3)), jnp.float32),
        "1x8x8": jnp.asarray(uniform(-1, 1, (3, 1, 8, 8, 3)), jnp.float32),
    }
    rngs = {name: jax.random.key(i) for i, name in enumerate(names)}  # unused by the toy
    vae, critic = ToyVAE(), disc.PatchDiscriminator3D(disc.DiscriminatorConfig(4, 1))
    params = numpy_params(vae, videos["3x8x8"])
    disc_params = numpy_params(critic, videos["3x8x8"], seed=1)
    loss_config = toy_loss_config()

    # The reference: each loss written out and differentiated through all params on its own.
    def reconstruction_loss(p):
        per_shape = []
        for n in names:
            out, mean, logvar = vae.apply({"params": p}, videos[n], sample_rng=rngs[n])
            error = out - videos[n]
            kl = 0.5 * (mean**2 + jnp.exp(logvar) - 1 - logvar).reshape(len(out), -1).sum(-1)
            edges = sum(  # squared error of vertical and horizontal neighbour differences
                jnp.square(jnp.diff(out, axis=a) - jnp.diff(videos[n], axis=a)).mean()
                for a in (2, 3)
            )
            pixel = 0.1 * jnp.abs(error).mean() + jnp.square(error).mean() + 0.5 * edges
            per_shape.append((pixel, kl.mean()))
        pixels, kls = zip(*per_shape, strict=True)
        return jnp.mean(jnp.stack(pixels)) + 1e-2 * jnp.mean(jnp.stack(kls))

    def adversarial_loss(p):
        scores = [
            critic.apply(
                {"params": disc_params}, vae.apply({"params": p}, videos[n], sample_rng=rngs[n])[0]
            ).mean()
            for n in names
        ]
        return -jnp.mean(jnp.stack(scores))

    references = jax.jit(
        lambda p: (
            jax.value_and_grad(reconstruction_loss)(p),
            jax.value_and_grad(adversarial_loss)(p),
        )
    )
    (rec_loss, rec_grads), (adv_loss, adv_grads) = references(params)
    last = lambda g: g["decoder"]["CausalConv3d_1"]["Conv_0"]["kernel"]  # noqa: E731
    expected_weight = np.linalg.norm(last(rec_grads)) / (np.linalg.norm(last(adv_grads)) + 1e-4)
    expected_grads = jax.tree.map(lambda r, a: r + 0.5 * expected_weight * a, rec_grads, adv_grads)

    step = jax.jit(
        lambda active: train_vae.generator_gradients(
            params,
            disc_params,
            videos,
            rngs,
            active,
            model=vae,
            discriminator=critic,
            loss_config=loss_config,
            names=names,
        )
    )
    grads, _, metrics = step(jnp.array(True))
    np.testing.assert_allclose(metrics["adaptive_weight"], expected_weight, rtol=1e-5)
    assert_gradients_close(grads, expected_grads)
    expected_loss = rec_loss + 0.5 * expected_weight * adv_loss
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
    # Switched off: the gradient is the reconstruction loss's alone, and so is the loss.
    grads, _, metrics = step(jnp.array(False))
    assert_gradients_close(grads, rec_grads)
    np.testing.assert_allclose(metrics["loss"], rec_loss, rtol=1e-6)
    assert float(metrics["gan_weight"]) == 0.0 and float(metrics["adversarial"]) == 0.0


def test_decoder_last_layer_is_the_layer_that_writes_pixels():
    model = VideoVAE(MICRO_CONFIG)
    video = jnp.ones((1, 3, 16, 16, 3)) * 0.3
    params = numpy_params(model, video)
    kernel = decoder_last_layer(params)
    assert kernel.shape[-1] == 3
    decoder = params["decoder"]
    name = next(k for k, v in decoder.items() if v.get("Conv_0", {}).get("kernel") is kernel)
    # With that kernel zeroed, every output pixel is that layer's bias.
    zeroed = jax.tree.map(lambda p: jnp.zeros_like(p) if p is kernel else p, params)
    out = jax.jit(model.apply)({"params": zeroed}, video)[0]
    bias = decoder[name]["Conv_0"]["bias"]
    np.testing.assert_allclose(out, jnp.broadcast_to(bias, out.shape), atol=1e-6)


# ---- Clip shapes and config checks -------------------------------------------------------------


def test_tiny_config_keeps_the_shipped_shapes_training():
    config = vae_configs.get_config("tiny")
    shapes = clip_shapes(config)
    assert shapes == (ClipShape(9, 32, 32, 12), ClipShape(1, 32, 32, 4))  # 25 % images
    assert (config.loss.pixel_loss, config.loss.pixel_weight) == ("l1", 0.1)
    assert (config.loss.mse_weight, config.loss.kl_weight) == (1.0, 1e-6)
    assert config.loss.gan_start_step is None
    config.data.num_clips = 64
    iterators = make_iterators(config, shapes)
    # What the shipped VAE read: videos with seed 0, images with seed 1, shuffled by 0 and 7.
    videos = batch_iterator(ShapesSource(64, 9, 32, 32, seed=0, split="all"), 12, 0)
    images = batch_iterator(ShapesSource(64, 1, 32, 32, seed=1, split="all"), 4, 7)
    np.testing.assert_array_equal(next(iterators["9x32x32"])["video"], next(videos)["video"])
    np.testing.assert_array_equal(next(iterators["1x32x32"])["video"], next(images)["video"])


@pytest.mark.parametrize("arg", ["real-4x8x8", "real-4x4x4"])
def test_real_footage_configs_fit_their_presets(arg):
    config = vae_configs.get_config(arg)
    config.data.folder = "/some/folder"
    model = VideoVAE(VAE_PRESETS[config.preset])
    d = config.discriminator
    critic = disc.PatchDiscriminator3D(disc.DiscriminatorConfig(d.base_channels, d.num_downsamples))
    shapes = clip_shapes(config)
    assert any(s.frames == 1 for s in shapes) and any(s.frames > 1 for s in shapes)
    train_vae.check_config(config, shapes, model, critic)  # raises on any misfit
    assert 0 < config.loss.gan_start_step < config.total_steps


def micro_config(**data):
    config = vae_configs.get_config("tiny")
    config.preset = MICRO
    config.data.clip_shapes = ((3, 16, 16, 2), (1, 16, 16, 1))
    config.data.update(data)
    return config


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.data.update(clip_shapes=((4, 16, 16, 2),)), r"num_frames must be 1 \+ 2"),
        (lambda c: c.data.update(clip_shapes=((3, 16, 16),)), "4 ints"),
        (lambda c: c.data.update(clip_shapes=((1, 16, 16, 1), (1, 16, 16, 2))), "repeats"),
        (lambda c: c.data.update(clip_shapes=((1, 16, 16, 0),)), "batch size 0"),
        (lambda c: c.data.update(source="webdataset"), "allowed: .'shapes', 'video_folder'"),
        (lambda c: c.loss.update(pixel_loss="l2"), "allowed: .'l1', 'charbonnier'"),
        (lambda c: c.loss.update(gan_start_step=-1), "gan_start_step"),
        (lambda c: c.data.update(source="video_folder"), "--config.data.folder=DIR"),
    ],
)
def test_bad_config_is_refused_before_any_work(tmp_path, monkeypatch, change, message):
    monkeypatch.setitem(VAE_PRESETS, MICRO, MICRO_CONFIG)
    config = micro_config()
    change(config)
    with pytest.raises(ValueError, match=message):
        train_vae.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_real_config_without_folder_names_the_flag(tmp_path):
    with pytest.raises(ValueError, match=r"--config.data.folder=DIR"):
        train_vae.train_and_evaluate(vae_configs.get_config("real-4x8x8"), tmp_path / "run")


# ---- Exact resume with the discriminator on, through the video-folder source --------------------


@contextlib.contextmanager
def quick_compiles(cache_directory):
    """Compile time is what these runs pay for, so: (1) a compilation cache, from which the
    second and third runs load the step the first compiled; (2) non-partitionable threefry,
    whose random-number code XLA:CPU compiles several times faster (the partitionable kind
    only matters for sharded random draws). The equality tested holds either way."""
    settings = {
        "jax_compilation_cache_dir": str(cache_directory),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
        "jax_threefry_partitionable": False,
    }
    previous = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


TOTAL_STEPS, RESTART_STEP, GAN_START = 5, 3, 2
WALK_FPS = 12.5  # the footage's rate, which reconstruction GIFs play at (GIF delay 8 cs)


def run_config(folder, total_steps, save_every, sample_every=100):
    config = micro_config(source="video_folder", folder=str(folder), num_clips=64)
    config.loss.gan_start_step = GAN_START
    config.discriminator.update(base_channels=4, num_downsamples=1)
    config.total_steps = total_steps
    config.log_every, config.save_every = 1, save_every
    config.sample_every = sample_every  # and at the last step; 0: never
    config.keep_checkpoints = 10
    config.num_stats_batches = 1
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_runs")
    folder = root / "footage"
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.integers(0, 4, (12, 24, 20, 3)), axis=0) % 256
    write_mp4(folder / "walk.mp4", walk.astype(np.uint8), WALK_FPS)
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(folder / "still.png")
    captions = [{"path": "walk.mp4", "caption": "a clip"}, {"path": "still.png", "caption": "x"}]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(c) for c in captions) + "\n")
    with pytest.MonkeyPatch.context() as patch, quick_compiles(root / "xla_cache"):
        patch.setitem(VAE_PRESETS, MICRO, MICRO_CONFIG)
        straight = train_vae.train_and_evaluate(
            run_config(folder, TOTAL_STEPS, save_every=TOTAL_STEPS, sample_every=0),
            root / "straight",
        )
        # Saves every step up to the restart: the GAN test reads those checkpoints.
        train_vae.train_and_evaluate(run_config(folder, RESTART_STEP, 1), root / "resumed")
        # A fresh call rebuilds model, optimizers, data and state from the workdir alone.
        resumed = train_vae.train_and_evaluate(
            run_config(folder, TOTAL_STEPS, save_every=TOTAL_STEPS), root / "resumed"
        )
    return root, straight, resumed


def read_metrics(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    timing = ("steps_per_s", "samples_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


def test_resume_gives_bitwise_the_same_losses_and_params(runs):
    root, straight, resumed = runs
    straight_metrics, resumed_metrics = (
        read_metrics(root / "straight"),
        read_metrics(root / "resumed"),
    )
    assert [m["step"] for m in resumed_metrics] == list(range(1, TOTAL_STEPS + 1))
    assert straight_metrics == resumed_metrics  # every loss and metric, every step, exactly
    assert int(resumed.step) == TOTAL_STEPS
    for field in ("params", "ema_params", "opt_state", "disc_params", "disc_opt_state"):
        chex.assert_trees_all_equal(getattr(straight, field), getattr(resumed, field))
    gif = root / "resumed" / "samples" / f"reconstruction_{TOTAL_STEPS:06d}.gif"
    assert Image.open(gif).info["duration"] == 80  # the footage's 12.5 fps, not the still's 1
    assert not (root / "straight" / "samples").exists()  # sample_every = 0: never
    assert (root / "resumed" / "export" / "config.json").is_file()


def test_a_run_restored_at_its_last_step_writes_its_export_again(runs, tmp_path, monkeypatch):
    from soraj import exports

    root, straight, _ = runs
    workdir = tmp_path / "again"
    shutil.copytree(root / "straight", workdir)
    shutil.move(workdir / "export", tmp_path / "first_export")  # as if lost after the save
    monkeypatch.setitem(VAE_PRESETS, MICRO, MICRO_CONFIG)
    config = run_config(root / "footage", TOTAL_STEPS, save_every=TOTAL_STEPS, sample_every=0)
    state = train_vae.train_and_evaluate(config, workdir)
    assert int(state.step) == TOTAL_STEPS
    assert read_metrics(workdir) == read_metrics(root / "straight")  # no step ran again
    abstract = jax.eval_shape(lambda: straight.ema_params)
    again, stored = exports.load_export(workdir / "export", abstract)
    first, _ = exports.load_export(tmp_path / "first_export", abstract)
    chex.assert_trees_all_equal(again, first)  # the last step's EMA params, as first written
    assert stored["step"] == TOTAL_STEPS
    assert np.all(np.isfinite(stored["latent_shift"] + stored["latent_scale"]))


def stored_disc_params(workdir, step):
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return state["disc_params"]


def test_gan_is_off_before_its_start_step_and_on_after(runs):
    root = runs[0]
    metrics = read_metrics(root / "resumed")
    for record in metrics:
        on = record["step"] > GAN_START  # metrics of step index s are logged as step s + 1
        assert record["gan_active"] == float(on)
        if on:
            assert record["gan_weight"] > 0 and record["disc_loss"] > 0
            assert record["loss"] != record["reconstruction"]
        else:
            assert record["gan_weight"] == record["adversarial"] == record["disc_loss"] == 0
            assert record["loss"] == record["reconstruction"]
    # Step index 1 (< GAN_START) leaves the discriminator as it was; step index 2 changes it.
    before, at_start, after = (stored_disc_params(root / "resumed", s) for s in (1, 2, 3))
    chex.assert_trees_all_equal(before, at_start)
    differences = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), at_start, after)
    assert all(d > 0 for d in jax.tree.leaves(differences))
