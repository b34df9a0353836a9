"""Comparing a stored tree of arrays with the tree a model expects: paths, shapes, dtypes.

Orbax restores whatever shapes were saved, whatever the target says, and casts dtypes, so a
checkpoint or export of a different model would load "successfully". Training checkpoints
(soraj/checkpoint.py) and exports (soraj/exports.py) both compare first, with these.
"""

import jax
import jax.numpy as jnp


def key_name(key) -> str:
    """One step of a tree path as text: a dict key, an attribute name or a sequence index."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _stored_signature(leaf) -> tuple[tuple, str]:
    # Typed PRNG keys are stored as their raw key data, which has trailing key dimensions.
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return tuple(data.shape), jnp.dtype(data.dtype).name
    return tuple(leaf.shape), jnp.dtype(leaf.dtype).name


def _signatures_by_path(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(key_name(k) for k in path): _stored_signature(leaf) for path, leaf in leaves}


def tree_differences(stored, expected) -> list[str]:
    """Human-readable differences between two trees of shaped leaves (empty: they match)."""
    stored, expected = _signatures_by_path(stored), _signatures_by_path(expected)
    differences = [
        f"missing {path} {shape}" for path, (shape, _) in expected.items() if path not in stored
    ]
    differences += [
        f"unexpected {path} {shape}" for path, (shape, _) in stored.items() if path not in expected
    ]
    differences += [
        f"{path}: stored {stored[path][0]}, expected {shape}"
        for path, (shape, _) in expected.items()
        if path in stored and stored[path][0] != shape
    ]
    differences += [
        f"{path}: stored dtype {stored[path][1]}, expected {dtype}"
        for path, (_, dtype) in expected.items()
        if path in stored and stored[path][1] != dtype
    ]
    return differences


def mismatch(stored, expected, where) -> str | None:
    """What a ValueError says when the trees differ (up to 8 differences listed), or None."""
    differences = tree_differences(stored, expected)
    if not differences:
        return None
    listed = "; ".join(differences[:8]) + (" ..." if len(differences) > 8 else "")
    return (
        f"checkpoint {where} does not match the model this config describes "
        f"({len(differences)} differences): {listed}"
    )


def check_tree_matches(stored, expected, where) -> None:
    message = mismatch(stored, expected, where)
    if message:
        raise ValueError(message)
