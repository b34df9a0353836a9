"""Exports: the inference folders that generation, reconstruction and captioning load.

An export is a folder with config.json (what rebuilds the model, and its "kind") and params/
(its arrays, an orbax PyTree in one OCDBT database). A bundle holds exports side by side: a
generation bundle has dit/ and vae/, the shipped one also captioner/. Models and commands read
exports through this module; the training checkpoint manager (soraj/checkpoint.py) does not own
it, and it needs nothing from training.

Anything wrong with an export on disk is a BundleError (a ValueError) whose one line names the
file and the problem; what the files alone can show is found before any array is read.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from soraj import export_arrays
from soraj.stored_trees import key_name, mismatch, tree_differences

EXPORT_CONFIG = "config.json"
EXPORT_PARAMS = "params"
# Each kind of export (config.json's "kind") as messages name it, and the command writing it.
KINDS = {
    "vae": ("VAE", "soraj train-vae"),
    "dit": ("DiT", "soraj train"),
    "captioner": ("captioner", "soraj train-captioner"),
    "expander": ("expander", "soraj train-expander"),
}
REMEDY = "the export is damaged: copy it again or export it anew"


class BundleError(ValueError):
    """An export or bundle on disk that cannot be used; the message names the file and why."""


# ---- Writing ----------------------------------------------------------------------------------
# Exports are written to a temporary folder NAME.tmp and swapped in (NAME → NAME.old, NAME.tmp →
# NAME, NAME.old removed), so a crash mid-write never leaves a half-written export where a good
# one was. config.json goes into NAME.tmp last and atomically: a NAME.tmp holding it is
# complete. recover_export finishes or undoes a swap a crash cut short.


def _staging_places(directory: Path) -> tuple[Path, Path]:
    """(NAME.tmp, NAME.old) of an export folder NAME."""
    return directory.with_name(directory.name + ".tmp"), directory.with_name(
        directory.name + ".old"
    )


def recover_export(directory: str | os.PathLike) -> None:
    """Puts an export folder back in order after a crash inside write_export:
    - NAME missing, NAME.old present (the crash came between the two renames): the complete
      NAME.tmp is swapped in, or else NAME.old goes back to NAME;
    - NAME present, NAME.old present (the crash came before NAME.old was removed): NAME.old,
      the export NAME replaced, is removed.
    A NAME.tmp left otherwise is an unfinished write; write_export starts it afresh."""
    directory = Path(directory).absolute()
    staging, previous = _staging_places(directory)
    if not directory.exists() and previous.exists():
        os.replace(staging if is_export(staging) else previous, directory)
    if directory.exists() and previous.exists():
        shutil.rmtree(previous)


def write_export(directory: str | os.PathLike, params, config: dict, dtype=jnp.bfloat16) -> Path:
    """Writes params (cast to dtype) and config (plus its param_dtype) as an export."""
    directory = Path(directory).absolute()
    recover_export(directory)  # a swap a crash cut short, before a new one starts
    staging, previous = _staging_places(directory)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    # Host arrays (ml_dtypes casts round to nearest even, as XLA's convert does).
    params = jax.tree.map(lambda p: np.asarray(p).astype(dtype), params)
    config = dict(config, param_dtype=jnp.dtype(dtype).name)
    # The calling process writes alone: with several processes only process 0 exports, and
    # orbax's default would wait at a barrier for the others.
    this_process = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    # OCDBT (orbax's default, named here because soraj/export_arrays.py reads that layout).
    with ocp.StandardCheckpointer(
        multiprocessing_options=this_process, use_ocdbt=True
    ) as checkpointer:
        checkpointer.save(staging / EXPORT_PARAMS, params)
    # Last and atomic: with config.json in it, NAME.tmp is complete (recover_export).
    partial = staging / (EXPORT_CONFIG + ".tmp")
    partial.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(partial, staging / EXPORT_CONFIG)
    if directory.exists():
        os.replace(directory, previous)
    os.replace(staging, directory)
    if previous.exists():
        shutil.rmtree(previous)
    return directory


# ---- Finding ----------------------------------------------------------------------------------


def is_export(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / EXPORT_CONFIG).is_file() and (directory / EXPORT_PARAMS).is_dir()


def search_places(path: str | os.PathLike, kind: str) -> list[Path]:
    """Where find_export looks for an export of `kind`, in this order:
    1. PATH itself: an export folder;
    2. PATH/<kind>: a bundle (experiments/shapes/checkpoint has vae/, dit/ and captioner/);
    3. PATH/export: the workdir of `soraj train-vae`, `train-captioner` or `train-expander`;
    4. PATH/export/<kind>: the workdir of `soraj train`, whose export/ is a bundle."""
    path = Path(path)
    return [path, path / kind, path / "export", path / "export" / kind]


def find_export(path: str | os.PathLike, kind: str) -> Path:
    """The first of search_places(path, kind) that is an export. That one must be of `kind`
    (another kind is an error, not a reason to look further)."""
    if kind not in KINDS:
        raise ValueError(f"unknown export kind {kind!r}; allowed: {', '.join(KINDS)}")
    name, writer = KINDS[kind]
    if not Path(path).exists():
        raise BundleError(f"no {name} export at {path}: it does not exist")
    places = search_places(path, kind)
    for candidate in places:
        if is_export(candidate):
            load_export_config(candidate, kind)  # refuses another kind or a damaged config
            return candidate
    raise BundleError(
        f"no {name} export at {path}: looked for {EXPORT_CONFIG} and {EXPORT_PARAMS}/ in "
        f"{', '.join(str(p) for p in places)} (`{writer}` writes one)"
    )


# ---- Reading ----------------------------------------------------------------------------------


def load_export_config(
    directory: str | os.PathLike, kind: str | None = None, required: tuple[str, ...] = ()
) -> dict:
    """config.json of an export, checked: a JSON object, of `kind` (if given), holding every
    `required` key."""
    directory = Path(directory)
    if not is_export(directory):
        raise BundleError(
            f"{directory} is not an export: it needs {EXPORT_CONFIG} and {EXPORT_PARAMS}/ "
            "(written by `soraj train`, `soraj train-vae` and the other trainers)"
        )
    path = directory / EXPORT_CONFIG
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); {REMEDY}"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise BundleError(f"{path} cannot be read ({error}); {REMEDY}") from error
    if not isinstance(stored, dict):
        raise BundleError(f"{path} holds a JSON {type(stored).__name__}, not an object; {REMEDY}")
    needed = ("kind", *required) if kind else required
    missing = [key for key in needed if key not in stored]
    if missing:
        listed = ", ".join(repr(key) for key in missing)
        which = f"a {kind}" if kind else "this"
        raise BundleError(f"{path} lacks {listed}, which {which} export needs; {REMEDY}")
    if kind and stored["kind"] != kind:
        raise BundleError(f"{directory} holds a {stored['kind']!r} export, not a {kind!r} one")
    return stored


@contextlib.contextmanager
def config_errors(directory: str | os.PathLike):
    """Around building objects from an export's config.json: a field missing (KeyError),
    unknown or mistyped (TypeError, AttributeError) or out of range (ValueError) becomes a
    BundleError naming the file."""
    try:
        yield
    except BundleError:
        raise
    except KeyError as error:
        path = Path(directory) / EXPORT_CONFIG
        raise BundleError(f"{path} lacks the field {error.args[0]!r}; {REMEDY}") from error
    except (AttributeError, TypeError, ValueError) as error:
        path = Path(directory) / EXPORT_CONFIG
        raise BundleError(f"{path} does not describe a model this code builds: {error}") from error


def load_export(directory: str | os.PathLike, abstract_params) -> tuple:
    """Returns (float32 plain params shaped like abstract_params, config dict).

    abstract_params may hold flax `nn.Partitioned` boxes (jax.eval_shape of a model's init).
    Exports store plain arrays; exports written before the trainers unboxed their state
    store each annotated param boxed (its array under ".../value"), and load the same. The
    files are checked first (soraj/export_arrays.py), then the stored tree against the model's,
    then the arrays are read."""
    directory = Path(directory).absolute()
    config = load_export_config(directory)
    params_dir = directory / EXPORT_PARAMS
    damage = export_arrays.find_damage(params_dir)
    if damage:
        raise BundleError(f"{damage}; {REMEDY}")
    try:
        stored_tree = export_arrays.stored_tree(params_dir)
    except ValueError as error:
        raise BundleError(f"{error}; {REMEDY}") from error
    with config_errors(directory):
        stored_dtype = jnp.dtype(config.get("param_dtype", "float32"))
    layouts = (nn.unbox(abstract_params), abstract_params)  # current, then boxed

    def as_stored(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, stored_dtype), tree)

    target = next(
        (as_stored(t) for t in layouts if not tree_differences(stored_tree, as_stored(t))), None
    )
    if target is None:
        raise BundleError(mismatch(stored_tree, as_stored(layouts[0]), params_dir))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
    # Orbax stores each array under its tree path joined by dots.
    names = [".".join(key_name(k) for k in path) for path, _ in leaves]
    try:
        arrays = export_arrays.read_arrays(params_dir, names)
    except ValueError as error:
        raise BundleError(f"{params_dir}: {error}; {REMEDY}") from error
    params = nn.unbox(jax.tree_util.tree_unflatten(treedef, arrays))
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params), config
