"""The device mesh, the logical-axis rule tables, and sharding helpers.

This is the only file that names mesh axes. Models annotate params (flax boxes from
`nn.with_logical_partitioning`) and activations (`nn.with_logical_constraint`) with logical
names ("batch", "embed", "mlp", ...); the tables below map them onto the mesh, and GSPMD
inserts the collectives.
"""

import warnings
from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "context")

# ---- Rule tables ----
# Logical axis → mesh axes, in priority order: flax gives each mesh axis to the first logical
# axis of an array that claims it, so activations (batch, tokens, embed) put fsdp on the batch
# and leave their embed axis whole, while weights shard their embed side over fsdp.
# Weights are split by fsdp (and context) on their embedding side and by tensor on the heads /
# MLP side (Megatron style); `context` splits the token axis of activations (sequence
# parallelism).
DIT_RULES = (
    ("batch", ("data", "fsdp")),
    ("tokens", "context"),
    # Weights: over fsdp and context together (ZeRO-3 over the context group, as MaxText and
    # maxdiffusion do): a long sequence's devices share the model's state as well as its
    # tokens. Activations keep context for their tokens, which claim it first.
    ("embed", ("fsdp", "context")),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("patch", None),
    ("text_embed", None),
    ("modulation", None),  # the 6D adaLN outputs: its embed input side is already fsdp
    ("modulation_part", None),  # the 6 (or 2) rows of an adaLN-single table
    ("freq", None),  # the 256 timestep-sinusoid features
    ("classes", None),  # the class-label table's rows, replicated like the other embeddings
    ("layers", None),  # the stacked block axis of scan_blocks: every device holds every layer
)
# Conv kernels (kt, kh, kw, F_in, F_out) shard their output features over fsdp; norms and
# biases are small and stay replicated.
VAE_RULES = (
    ("batch", ("data", "fsdp")),
    ("conv_out", "fsdp"),
    ("conv_in", None),
    ("conv_time", None),
    ("conv_height", None),
    ("conv_width", None),
)


# ---- Mesh ----


def make_mesh(mesh_config: ml_collections.ConfigDict | None = None, devices=None) -> Mesh:
    """A (data, fsdp, tensor, context) mesh; sizes of -1 take the remaining devices."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    sizes = [
        int(getattr(mesh_config, axis, 1)) if mesh_config is not None else 1 for axis in MESH_AXES
    ]
    if mesh_config is None:
        sizes[0] = -1
    known = int(np.prod([s for s in sizes if s != -1]))
    if sizes.count(-1) > 1 or devices.size % known:
        raise ValueError(
            f"mesh sizes {dict(zip(MESH_AXES, sizes, strict=True))} do not fit {devices.size} "
            "devices: their product must equal the device count (at most one size may be -1)"
        )
    sizes = [devices.size // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != devices.size:
        raise ValueError(
            f"mesh sizes {dict(zip(MESH_AXES, sizes, strict=True))} multiply to "
            f"{int(np.prod(sizes))}, but there are {devices.size} devices"
        )
    return Mesh(devices.reshape(sizes), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over data × fsdp; every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def tokens_sharding(mesh: Mesh) -> NamedSharding:
    """(B, L, ...) arrays with the batch over data × fsdp and the tokens over context: one
    long sequence's inputs, each device holding only its own tokens."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), "context"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch → global arrays split along the batch axis."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


# ---- Sharded state ----


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
    """NamedSharding per leaf of a (possibly boxed) tree from jax.eval_shape.

    Leaves in `nn.Partitioned` / `nn.LogicallyPartitioned` boxes get their logical names mapped
    through `rules`; plain leaves (scalars, PRNG keys, unannotated params) are replicated. An
    axis whose length its mesh axes do not divide stays whole (a VAE's 3-channel RGB output
    conv on fsdp = 2, say), since jit cannot split it evenly. The result has the structure of
    the unboxed tree.
    """
    mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_tree), rules)
    kept_whole = []  # (bytes, length, mesh axes) of each axis left whole

    def fitted(spec: PartitionSpec, leaf) -> NamedSharding:
        entries = []
        for length, axes in zip(leaf.shape, spec, strict=False):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            size = int(np.prod([mesh.shape[name] for name in names]))
            entries.append(axes if length % size == 0 else None)
            if length % size:
                kept_whole.append((leaf.size * leaf.dtype.itemsize, length, names, size))
        return NamedSharding(mesh, PartitionSpec(*entries))

    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    shapes = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, abstract_tree, is_leaf=is_box
    )
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    shardings = jax.tree.map(fitted, mesh_specs, shapes, is_leaf=is_spec)
    if kept_whole:  # said out loud: a large model left whole may not fit the devices
        total = sum(leaf_bytes for leaf_bytes, *_ in kept_whole)
        examples = sorted({(length, names, size) for _, length, names, size in kept_whole})[:4]
        described = ", ".join(f"length {n} over {'×'.join(a)}={k}" for n, a, k in examples)
        warnings.warn(
            f"{len(kept_whole)} array axes ({total / 2**20:.1f} MiB of arrays) stay whole on "
            f"every device because their mesh axes do not divide them ({described}); choose "
            "mesh sizes that divide the model's widths to shard them",
            stacklevel=2,
        )
    return shardings


def sharded_init(init_fn: Callable, rng, mesh: Mesh, rules) -> tuple:
    """(state, state_shardings): init_fn(rng) made directly in its sharded layout.

    The shapes and logical names come from `jax.eval_shape`, so nothing is computed twice and
    no device ever holds the whole model. Optimizer moments are built by mapping over the
    boxed params, so they carry (and get) the params' names; everything else is replicated.
    The returned state holds plain (unboxed) arrays.
    """
    abstract = jax.eval_shape(init_fn, rng)
    state_shardings = logical_shardings(abstract, mesh, rules)
    # No mesh context while tracing: out_shardings place every leaf, and under a mesh flax's
    # DenseGeneral would constrain its flat (pre-reshape) kernel with the kernel's full rank.
    init = jax.jit(
        lambda r: nn.unbox(init_fn(r)),
        in_shardings=replicated(mesh),
        out_shardings=state_shardings,
    )
    return init(rng), state_shardings


def jit_train_step(step_fn: Callable, state_shardings, mesh: Mesh, rules) -> Callable:
    """step_fn (state, batch, rng) → (state, metrics), jitted once for this mesh.

    State keeps state_shardings in and out (and is donated); the batch is split along its
    leading axis (build it with shard_batch); rng and metrics are replicated. The step is traced
    under the rules and the mesh, so the models' `nn.with_logical_constraint` calls on
    activations take effect.
    """

    def traced(state, batch, rng):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return step_fn(state, batch, rng)

    return jax.jit(
        traced,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
