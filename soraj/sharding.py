"""The device mesh, the logical-axis rule tables, and sharding helpers.

This is the only file that names mesh axes. Models annotate params and activations with
logical names ("batch", "embed", "mlp", ...); the tables below map them onto the mesh.
"""

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "context")

# Logical axis → mesh axes. Batch rows go over data and fsdp; weights are sharded by fsdp on
# their embedding side and by tensor on the heads / MLP side (Megatron style).
DIT_RULES = (
    ("batch", ("data", "fsdp")),
    ("tokens", "context"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("patch", None),
    ("text_embed", None),
    ("classes", None),  # the class-label table's rows, replicated like the other embeddings
)
VAE_RULES = (
    ("batch", ("data", "fsdp")),
    ("conv_in", None),
    ("conv_out", "fsdp"),
)


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


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch → global arrays split along the batch axis."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )
