"""Run by tests/test_sharding.py in a subprocess with 8 fake CPU devices: the sharded DiT train
step on several (data, fsdp, tensor, context) meshes against the plain one-device step, the
PartitionSpec of every param and optimizer moment against the rule tables, no recompilation
on the second step, and the VAE's sharded init. Exits non-zero (an AssertionError) on any
failure; prints one line per check."""

import functools
import sys
import time
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from soraj import optim, sharding
from soraj.configs import t2v
from soraj.generate import init_params
from soraj.models.conditioning import TextConfig
from soraj.models.discriminator import DiscriminatorConfig, PatchDiscriminator3D
from soraj.models.dit import DiT, DiTConfig
from soraj.models.vae import VAEConfig, VideoVAE
from soraj.train import train_step
from soraj.train_vae import VAETrainState

MESHES = ((8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1), (2, 2, 1, 2), (1, 1, 1, 1))
# float32 sums split over devices add in a different order than on one device.
RTOL, ATOL = 1e-5, 1e-6

# The mesh axis each logical name must land on, written out here rather than read from
# sharding.py, so a wrong rule table fails. Names not listed stay whole.
EXPECTED_DIT_AXES = {"embed": ("fsdp", "context"), "mlp": "tensor", "heads": "tensor"}
EXPECTED_VAE_AXES = {"conv_out": "fsdp"}
EMBED = ("fsdp", "context")


# ---- A tiny text-conditioned DiT and one packed batch ----


def tiny_setup(scan_blocks=False, width=32, num_heads=2, context_parallel="all_gather"):
    config = t2v.get_config("tiny")
    config.optim.warmup_steps = 0  # a full-size first step, so params move
    config.data.token_budget = 8  # self-attention in windows of 24 keys over 32-token rows
    text = TextConfig(max_tokens=4)
    dit = DiT(
        DiTConfig(
            width=width,
            depth=2,
            num_heads=num_heads,
            patch_size=(1, 1, 1),
            latent_channels=8,
            text_width=text.width,
            scan_blocks=scan_blocks,
            context_parallel=context_parallel,
        )
    )
    optimizer = optim.make_optimizer(config.optim)

    def init_state(rng):
        init_rng, state_rng = jax.random.split(rng)
        return optim.TrainState.create(init_params(dit, text, init_rng), optimizer, state_rng)

    step = functools.partial(train_step, dit=dit, text=text, optimizer=optimizer, config=config)
    return init_state, step, packed_batch(text.width)


def packed_batch(text_width, rows=8, length=32, segments=4, text_tokens=4, features=8):
    """Rows of 4 contiguous segments (8, 8, 6 and 4 tokens) and 6 padding tokens."""
    rng = np.random.default_rng(0)
    grids = [(1, 2, 4), (2, 2, 2), (1, 2, 3), (1, 2, 2)]
    segment_ids, coords = [], []
    for s, (t, h, w) in enumerate(grids, start=1):
        grid = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"), -1)
        coords.append(grid.reshape(-1, 3))
        segment_ids += [s] * (t * h * w)
    pad = length - len(segment_ids)
    coords = np.concatenate([*coords, np.zeros((pad, 3), int)]).astype(np.int32)
    segment_ids = np.array(segment_ids + [0] * pad, np.int32)
    cond_mask = np.zeros(length, bool)
    cond_mask[8:12] = True  # the first frame of segment 2 is given clean
    text_mask = np.ones((rows, segments, text_tokens), bool)
    text_mask[:, :, 3] = False
    return {
        "latents": rng.normal(size=(rows, length, features)).astype(np.float32),
        "coords": np.tile(coords, (rows, 1, 1)),
        "segment_ids": np.tile(segment_ids, (rows, 1)),
        "cond_mask": np.tile(cond_mask, (rows, 1)),
        "grid": np.tile(np.array(grids, np.int32), (rows, 1, 1)),
        "text": rng.normal(size=(rows, segments, text_tokens, text_width)).astype(np.float32),
        "text_mask": text_mask,
    }


# ---- Checks ----


def expected_spec(names, shape, table, mesh) -> tuple:
    """The test's own reading of the rules: an axis whose length its mesh axis does not
    divide stays whole."""
    axes = [table.get(name) for name in names]

    def size(a):
        return int(np.prod([mesh.shape[x] for x in ((a,) if isinstance(a, str) else a)]))

    return tuple(
        a if a is None or n % size(a) == 0 else None for a, n in zip(axes, shape, strict=True)
    )


def stripped(spec) -> tuple:
    """A PartitionSpec as a tuple without trailing Nones (P('a') == P('a', None))."""
    spec = tuple(spec)
    while spec and spec[-1] is None:
        spec = spec[:-1]
    return spec


def check_specs(abstract, state, table, mesh, where) -> int:
    """Every boxed leaf of the abstract state sits on the mesh axes its names say; every other
    leaf is replicated. Returns the number of sharded leaves checked."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    boxes = jax.tree.leaves(abstract, is_leaf=is_box)
    arrays = jax.tree.leaves(state)
    assert len(boxes) == len(arrays), where
    sharded = 0
    for box, array in zip(boxes, arrays, strict=True):
        want = (
            stripped(expected_spec(box.names, box.value.shape, table, mesh)) if is_box(box) else ()
        )
        got = stripped(array.sharding.spec)
        assert got == want, f"{where}: names {getattr(box, 'names', None)} → {got}, want {want}"
        sharded += bool(want)
    return sharded


def check_named_dit_specs(state):
    """A few params, their Adam moments and the scalars, spelled out against the rule table."""
    block = state.params["dit"]["block_0"]
    named = {
        "mlp in (embed, mlp)": (block["mlp"]["Dense_0"]["kernel"], P(EMBED, "tensor")),
        "mlp out (mlp, embed)": (block["mlp"]["Dense_1"]["kernel"], P("tensor", EMBED)),
        "query (embed, heads, kv)": (block["self_attn"]["query"]["kernel"], P(EMBED, "tensor")),
        "attention out (heads, kv, embed)": (
            block["self_attn"]["out"]["kernel"],
            P("tensor", None, EMBED),
        ),
        "patch_embed (patch, embed)": (
            state.params["dit"]["patch_embed"]["kernel"],
            P(None, EMBED),
        ),
        "adaLN (embed, modulation)": (state.params["dit"]["adaLN"]["kernel"], P(EMBED)),
        "a bias": (state.params["dit"]["adaLN"]["bias"], P()),
        "adaLN table (modulation_part, embed)": (block["modulation_table"], P(None, EMBED)),
        "step": (state.step, P()),
        "rng": (state.rng, P()),
    }
    moments = jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    for path, leaf in moments:
        key = jax.tree_util.keystr(path)
        if key.endswith("['dit']['block_0']['mlp']['Dense_0']['kernel']"):
            named[f"moment {key}"] = (leaf, P(EMBED, "tensor"))
    assert sum(name.startswith("moment") for name in named) == 2, "mu and nu of the mlp kernel"
    for name, (array, spec) in named.items():
        got = stripped(array.sharding.spec)
        assert got == stripped(spec), f"{name}: {got}, want {spec}"


def assert_trees_close(state, reference, where, atol=ATOL):
    """Params, moments, EMA and step of two train states agree to float32 reduction order."""
    state, reference = jax.tree.map(np.asarray, (state.replace(rng=0), reference.replace(rng=0)))
    paths = jax.tree_util.tree_flatten_with_path(reference)[0]
    for (path, want), got in zip(paths, jax.tree.leaves(state), strict=True):
        name = f"{where} {jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=name)


def check_scanned_specs():
    """With scan_blocks the block params gain a leading "layers" axis, which stays whole."""
    init_state, _, _ = tiny_setup(scan_blocks=True)
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    abstract = jax.eval_shape(init_state, jax.random.key(0))
    shardings = sharding.logical_shardings(abstract, mesh, sharding.DIT_RULES)
    blocks = shardings.params["dit"]["blocks"]
    assert blocks["mlp"]["Dense_0"]["kernel"].spec == P(None, EMBED, "tensor")
    assert blocks["self_attn"]["out"]["kernel"].spec == P(None, "tensor", None, EMBED)
    print("scanned blocks on (2, 2, 2): (layers, embed, mlp) → (None, fsdp, tensor)")


def check_vae_init():
    """The VAE trainer's state (VAE, discriminator, both optimizers) made sharded on a
    (data 4, fsdp 2) mesh: conv kernels split their output features over fsdp where it
    divides them, and the values equal a plain init."""
    model = VideoVAE(
        VAEConfig(
            base_channels=8,
            channel_multipliers=(1, 1, 2),
            num_res_blocks=0,
            latent_channels=4,
            temporal_downsample=(False, False),
            spatial_downsample=(True, True),
            mid_attention=True,
        )
    )
    critic = PatchDiscriminator3D(DiscriminatorConfig(base_channels=8, num_downsamples=1))
    optimizer = optim.make_optimizer(t2v.get_config("tiny").optim)
    video = jnp.zeros((1, 1, 8, 8, 3))

    def init_state(rng, init="init_boxed"):
        vae_rng, state_rng, disc_rng = jax.random.split(rng, 3)
        params = getattr(model, init)(vae_rng, video)["params"]
        disc_params = getattr(critic, init)(disc_rng, video)["params"]
        return VAETrainState.create(params, optimizer, state_rng).replace(
            disc_params=disc_params, disc_opt_state=optimizer.init(disc_params)
        )

    rng = jax.random.key(0)
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=4, fsdp=2)))
    state, _ = sharding.sharded_init(init_state, rng, mesh, sharding.VAE_RULES)
    abstract = jax.eval_shape(init_state, rng)
    sharded = check_specs(abstract, state, EXPECTED_VAE_AXES, mesh, "VAE on (4, 2)")
    rgb_out = state.params["decoder"]["CausalConv3d_1"]["Conv_0"]["kernel"]
    assert rgb_out.shape[-1] == 3 and stripped(rgb_out.sharding.spec) == (), "RGB conv is whole"
    plain = jax.jit(functools.partial(init_state, init="init"))(rng)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(plain), strict=True):
        if not jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(got, want)
    print(f"VAE + discriminator state on (4, 2): {sharded} sharded leaves, values as plain init")


def check_undividable_axes_are_reported():
    """An axis the mesh cannot split stays whole, and logical_shardings says so out loud."""
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=8)))
    boxed = {
        "wide": nn.Partitioned(jax.ShapeDtypeStruct((16, 4), np.float32), ("fsdp", None)),
        "odd": nn.Partitioned(jax.ShapeDtypeStruct((12, 4), np.float32), ("fsdp", None)),
    }
    rules = (("fsdp", "fsdp"),)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shardings = sharding.logical_shardings(boxed, mesh, rules)
    assert shardings["wide"].spec == P("fsdp", None), shardings["wide"].spec
    assert shardings["odd"].spec == P(None, None), shardings["odd"].spec
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "length 12 over fsdp=8" in messages[0], messages
    assert "1 array axes (0.0 MiB" in messages[0], messages


def main():
    if jax.device_count() < 8:
        sys.exit(
            f"sharded_step_check needs 8 devices, found {jax.device_count()}: run with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu"
        )
    init_state, step, host_batch = tiny_setup()
    rng, step_rng = jax.random.key(0), jax.random.key(1)

    # ---- The reference: plain jit on one device, no sharding helpers ----
    one_device = jax.jit(step)
    reference = nn.unbox(jax.jit(init_state)(rng))
    reference_losses = []
    for _ in range(2):
        reference, metrics = one_device(reference, host_batch, step_rng)
        reference_losses.append(float(metrics["loss"]))

    abstract = jax.eval_shape(init_state, rng)
    for sizes in MESHES:
        mesh_config = dict(zip(sharding.MESH_AXES, sizes, strict=True))
        start = time.time()
        devices = jax.devices()[: int(np.prod(sizes))]
        mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_config), devices)
        state, shardings = sharding.sharded_init(init_state, rng, mesh, sharding.DIT_RULES)
        sharded = check_specs(abstract, state, EXPECTED_DIT_AXES, mesh, f"mesh {sizes}")
        if sizes == (2, 2, 2, 1):
            check_named_dit_specs(state)
        jitted = sharding.jit_train_step(step, shardings, mesh, sharding.DIT_RULES)
        losses = []
        for _ in range(2):
            state, metrics = jitted(state, sharding.shard_batch(host_batch, mesh), step_rng)
            losses.append(float(metrics["loss"]))
        assert jitted._cache_size() == 1, f"mesh {sizes}: {jitted._cache_size()} compilations"
        if mesh.shape["context"] > 1:
            # The DiT's activations (B, L, D) are laid out with their tokens over context.
            text = jitted.lower(state, sharding.shard_batch(host_batch, mesh), step_rng).as_text()
            assert '[{"data", "fsdp"}, {"context"}, {}]' in text, "no token-axis constraint"
        np.testing.assert_allclose(losses, reference_losses, rtol=RTOL, err_msg=f"{sizes}")
        check_specs(abstract, state, EXPECTED_DIT_AXES, mesh, f"mesh {sizes} after two steps")
        assert_trees_close(state, reference, f"mesh {sizes}")
        print(
            f"mesh {sizes}: losses {losses} (one device {reference_losses}); "
            f"{sharded} sharded leaves; one compilation; {time.time() - start:.1f} s"
        )
    check_scanned_specs()
    check_vae_init()
    check_undividable_axes_are_reported()
    print("ALL OK")


if __name__ == "__main__":
    main()
