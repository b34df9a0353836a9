"""Orbax training checkpoints: the manager of each step's state, data iterator position and
metadata. Exports, the inference folders, are soraj/exports.py's."""

import json
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from soraj.stored_trees import check_tree_matches, key_name

# What one training step stores: the TrainState arrays, the data iterator position (JSON) and
# the run's description (JSON). A step missing any of them is refused, never partly loaded.
TRAINING_ITEMS = ("state", "data", "metadata")


# ---- Checking a state before it is saved ----------------------------------------------------


def _is_float(leaf) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return isinstance(leaf, float) if dtype is None else jnp.issubdtype(dtype, jnp.inexact)


@jax.jit
def _all_finite(leaves):  # one bool per leaf, in one dispatch however many leaves there are
    return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


def check_finite(state, step: int) -> None:
    """Raises FloatingPointError naming the first float leaf holding a NaN or Inf."""
    named = [
        ("/".join(key_name(k) for k in path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if _is_float(leaf)
    ]
    if not named:
        return
    finite = np.asarray(jax.device_get(_all_finite([leaf for _, leaf in named])))
    if not finite.all():
        bad = [path for (path, _), ok in zip(named, finite, strict=True) if not ok]
        raise FloatingPointError(
            f"refusing to checkpoint step {step}: state leaf {bad[0]} holds NaN or Inf "
            f"({len(bad)} non-finite leaves in all); the last saved checkpoint is kept as it is"
        )


# ---- Training checkpoints -------------------------------------------------------------------
# Orbax writes each step into `<step>.orbax-checkpoint-tmp*` and renames it to `<step>` only
# once every item is complete (on object stores it writes commit_success.txt last instead), so
# a save cut short by a crash or SIGKILL is invisible to latest_step() and never restored.


def make_manager(
    workdir: str | os.PathLike, keep: int, save_every: int, keep_period: int = 0
) -> ocp.CheckpointManager:
    """A manager over WORKDIR/checkpoints with async saves that keeps the last `keep` steps plus
    every step divisible by `keep_period` (0: none); restart continues from the latest."""
    for name, value, least in (("keep", keep, 1), ("save_every", save_every, 1)):
        if int(value) < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value}")
    if int(keep_period) < 0:
        raise ValueError(f"keep_period must be 0 (keep no extra steps) or >= 1, got {keep_period}")
    policies = [checkpoint_managers.LatestN(n=int(keep))]
    if keep_period:
        policies.append(checkpoint_managers.EveryNSteps(interval_steps=int(keep_period)))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=int(save_every),
        enable_async_checkpointing=True,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
    )
    workdir = str(workdir)  # a local folder or a URL such as gs://bucket/run (orbax takes both)
    directory = f"{workdir if '://' in workdir else os.path.abspath(workdir)}/checkpoints"
    # Handlers are named up front so a new process can read item metadata before restoring.
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
        "metadata": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def manager_from_config(config, workdir) -> ocp.CheckpointManager:
    """The manager a trainer's config asks for: under config.checkpoint_dir (or the workdir),
    saving every config.save_every steps, keeping keep_checkpoints plus every keep_period-th."""
    return make_manager(
        config.checkpoint_dir or workdir,
        config.keep_checkpoints,
        config.save_every,
        config.keep_period,
    )


def save_train_state(manager, step: int, state, data_state: dict, metadata: dict, force=False):
    """Starts an async save of state, the data iterator position and metadata as one step, and
    returns whether it did (orbax skips steps off the save_every grid unless force). Checks
    first, writing nothing, that every float leaf is finite and the two dicts are JSON."""
    check_finite(state, step)
    for name, value in (("data_state", data_state), ("metadata", metadata)):
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{name} must be JSON-serialisable to be checkpointed: {error}"
            ) from error
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        metadata=ocp.args.JsonSave(metadata),
    )
    return manager.save(step, args=args, force=force)


def _placed(abstract_state):
    """abstract_state with a sharding on every leaf, each checked to fit its leaf's shape. A leaf
    without one goes to the default device, as an unplaced array would; without this orbax would
    use the sharding stored in the checkpoint, which names devices of the saving run."""

    def place(path, leaf):
        name = "/".join(key_name(k) for k in path)
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            if jax.process_count() > 1:
                raise ValueError(f"restoring on several processes needs a sharding for {name}")
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        try:
            sharding.shard_shape(leaf.shape)
        except ValueError as error:
            raise ValueError(f"cannot restore {name} onto its target sharding: {error}") from None
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(place, abstract_state)


def _unreadable(where: str, error: Exception, remedy: str) -> ValueError:
    # Tensorstore errors end with a long JSON spec of the store; the file they name comes first.
    message = str(error).split(" [tensorstore_spec=")[0][:600]
    return ValueError(
        f"checkpoint {where} could not be restored (a file missing, truncated or corrupt?): "
        f"{type(error).__name__}: {message}; {remedy}"
    )


def restore_train_state(manager, abstract_state):
    """Returns (state, data_state, step) of the latest complete checkpoint, or None if there is
    none. Leaves of abstract_state that carry a `.sharding` are restored straight onto it (so a
    run can resume on another mesh); a missing, mismatched or unreadable item is a ValueError."""
    step = manager.latest_step()
    if step is None:
        return None
    where = f"{manager.directory}/{step}"
    others = [s for s in manager.all_steps() if s != step]
    remedy = (
        f"move that folder aside to resume from step {max(others)}"
        if others
        else "no other complete checkpoint exists; move the folder aside to start fresh"
    )
    try:
        stored = manager.item_metadata(step)
    except Exception as error:  # orbax/tensorstore raise several types for damaged files
        raise _unreadable(where, error, remedy) from error
    missing = [name for name in TRAINING_ITEMS if name not in stored.keys()]
    if missing or stored["state"] is None:
        raise ValueError(
            f"checkpoint {where} is incomplete: item(s) {missing or ['state']} missing or "
            f"unreadable (found {sorted(stored.keys())}, need {list(TRAINING_ITEMS)}); {remedy}"
        )
    check_tree_matches(stored["state"].tree, abstract_state, where)
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(_placed(abstract_state)),
        data=ocp.args.JsonRestore(),
        metadata=ocp.args.JsonRestore(),
    )
    try:
        restored = manager.restore(step, args=args)
    except Exception as error:
        raise _unreadable(where, error, remedy) from error
    return restored.state, restored.data, step


def restore_or_init(manager, init_state, rng, out_sharding):
    """(state, data_state, start_step): the latest checkpoint's, restored onto out_sharding, or
    a fresh state made by the jitted init_state(rng) straight into out_sharding, with data_state
    None and step 0. Only a run with no complete checkpoint at all starts fresh."""
    init = jax.jit(init_state, out_shardings=out_sharding)
    restored = restore_train_state(manager, jax.eval_shape(init, rng))
    if restored is not None:
        return restored
    directory = manager.directory  # an epath: local folders and gs:// alike
    unfinished = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if unfinished and jax.process_index() == 0:
        print(f"no complete checkpoint in {directory}; ignoring unfinished saves {unfinished}")
    return init(rng), None, 0


def restore_metadata(manager, step: int) -> dict:
    """The metadata item (config, mesh, code version) of a saved step."""
    where = f"{manager.directory}/{step}"
    if step not in manager.all_steps():
        raise ValueError(f"no complete checkpoint {where}; saved steps: {manager.all_steps()}")
    args = ocp.args.Composite(metadata=ocp.args.JsonRestore())
    try:
        return manager.restore(step, args=args).metadata
    except Exception as error:
        raise _unreadable(where, error, "its metadata item is missing or damaged") from error


def training_metadata(config, mesh) -> dict:
    """What every training checkpoint records beside the state: config, code and mesh."""
    return {
        "config": json.loads(config.to_json_best_effort()),
        "code_version": code_version(),
        "mesh": dict(mesh.shape),
    }


def code_version() -> str:
    """The git commit of the code, for checkpoint metadata ('unknown' outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
