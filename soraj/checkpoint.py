"""Orbax checkpoints: the training manager (state + data + metadata) and exported params."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

EXPORT_CONFIG = "config.json"
EXPORT_PARAMS = "params"


# ---- Checking what is stored against what is expected ---------------------------------------
# Orbax restores whatever shapes were saved, whatever the target says, so a checkpoint from a
# different model would load "successfully". Every restore compares the trees first.


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _stored_shape(leaf) -> tuple:
    # Typed PRNG keys are stored as their raw key data, which has trailing key dimensions.
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
    return tuple(leaf.shape)


def _shapes_by_path(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): _stored_shape(leaf) for path, leaf in leaves}


def tree_differences(stored, expected) -> list[str]:
    """Human-readable differences between two trees of shaped leaves (empty: they match)."""
    stored, expected = _shapes_by_path(stored), _shapes_by_path(expected)
    differences = [
        f"missing {path} {shape}" for path, shape in expected.items() if path not in stored
    ]
    differences += [
        f"unexpected {path} {shape}" for path, shape in stored.items() if path not in expected
    ]
    differences += [
        f"{path}: stored {stored[path]}, expected {shape}"
        for path, shape in expected.items()
        if path in stored and stored[path] != shape
    ]
    return differences


def check_tree_matches(stored, expected, where) -> None:
    differences = tree_differences(stored, expected)
    if differences:
        listed = "; ".join(differences[:8]) + (" ..." if len(differences) > 8 else "")
        raise ValueError(
            f"checkpoint {where} does not match the model this config describes "
            f"({len(differences)} differences): {listed}"
        )


# ---- Training checkpoints -------------------------------------------------------------------


def make_manager(workdir: str | os.PathLike, keep: int, save_every: int) -> ocp.CheckpointManager:
    """A manager over WORKDIR/checkpoints with async saves; restart continues from the latest."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=True
    )
    directory = Path(workdir).absolute() / "checkpoints"
    # Handlers are named up front so a new process can read item metadata before restoring.
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
        "metadata": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save_train_state(manager, step: int, state, data_state: dict, metadata: dict, force=False):
    """Saves state, the data iterator position and metadata as one step (async)."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        metadata=ocp.args.JsonSave(metadata),
    )
    return manager.save(step, args=args, force=force)


def restore_train_state(manager, abstract_state):
    """Returns (state, data_state, step) of the latest complete checkpoint, or None."""
    step = manager.latest_step()
    if step is None:
        return None
    stored = manager.item_metadata(step)
    if stored is None or stored.get("state") is None:
        raise ValueError(f"checkpoint {manager.directory}/{step} has no 'state' item")
    check_tree_matches(stored["state"], abstract_state, f"{manager.directory}/{step}")
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        metadata=ocp.args.JsonRestore(),
    )
    try:
        restored = manager.restore(step, args=args)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"checkpoint {manager.directory}/{step} does not match this config "
            f"(shapes or items differ): {error}"
        ) from error
    return restored.state, restored.data, step


def restore_or_init(manager, init_state, rng, out_sharding):
    """(state, data_state, start_step): the latest checkpoint's, or a fresh state made by the
    jitted init_state(rng) straight into out_sharding, with data_state None and step 0."""
    restored = restore_train_state(manager, jax.eval_shape(init_state, rng))
    if restored is not None:
        return restored
    return jax.jit(init_state, out_shardings=out_sharding)(rng), None, 0


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


# ---- Exported (inference) checkpoints -------------------------------------------------------
# An export is a folder with config.json (what is needed to rebuild the model) and params/ (an
# orbax PyTree). Exports are written to a temporary folder and swapped in, so a crash mid-write
# never leaves a half-written export where a good one was.


def export_params(directory: str | os.PathLike, params, config: dict, dtype=jnp.bfloat16) -> Path:
    directory = Path(directory).absolute()
    staging = directory.with_name(directory.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    params = jax.tree.map(lambda p: np.asarray(jnp.asarray(p, dtype)), params)
    config = dict(config, param_dtype=jnp.dtype(dtype).name)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging / EXPORT_PARAMS, params)
    (staging / EXPORT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    previous = directory.with_name(directory.name + ".old")
    if directory.exists():
        os.replace(directory, previous)
    os.replace(staging, directory)
    if previous.exists():
        shutil.rmtree(previous)
    return directory


def is_export(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / EXPORT_CONFIG).is_file() and (directory / EXPORT_PARAMS).is_dir()


def load_export_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    if not is_export(directory):
        raise ValueError(
            f"{directory} is not an exported checkpoint: it needs {EXPORT_CONFIG} and "
            f"{EXPORT_PARAMS}/ (written by `soraj train` / `soraj train-vae`)"
        )
    return json.loads((directory / EXPORT_CONFIG).read_text())


def load_export(directory: str | os.PathLike, abstract_params) -> tuple:
    """Returns (float32 params shaped like abstract_params, config dict)."""
    config = load_export_config(directory)
    stored_dtype = jnp.dtype(config.get("param_dtype", "float32"))
    stored = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, stored_dtype), abstract_params)
    path = Path(directory).absolute() / EXPORT_PARAMS
    with ocp.StandardCheckpointer() as checkpointer:
        check_tree_matches(checkpointer.metadata(path).item_metadata.tree, stored, path)
        params = checkpointer.restore(path, stored)
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params), config
