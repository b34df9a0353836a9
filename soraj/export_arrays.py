"""The arrays of an export's params/ folder, an OCDBT database that orbax wrote: checked for
missing and short files from its index alone, described by orbax's _METADATA, then read with
tensorstore.

Why not orbax's restore: it reads every array at once through asyncio and closes its event
loop as soon as one read fails. The reads still in flight then finish on tensorstore's threads
and each prints an "Event loop is closed" traceback, hundreds of lines after the one error
that matters. Tensorstore's own futures, waited on here without asyncio, fail quietly.
"""

from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

MANIFEST = "manifest.ocdbt"  # the database's root: its configuration and latest version


# ---- Checking the files the index refers to --------------------------------------------------


def _referenced_file(params: Path, reference: str) -> tuple[Path, int]:
    """(file, bytes it must hold) of an index reference such as
    "value:ocdbt.process_0/:d/1678…:5939207:10971" (kind:base path:file:offset:length)."""
    location = reference.split(":", 1)[1]
    place, offset, length = location.rsplit(":", 2)
    base_path, relative = place.split(":", 1)
    return params / (base_path + relative), int(offset) + int(length)


def _shortfall(path: Path, needed: int) -> str | None:
    if not path.is_file():
        return f"{path} is missing (the export's index refers to it)"
    size = path.stat().st_size
    if size < needed:
        return f"{path} is cut short: {size} bytes where the export's index needs {needed}"
    return None


def find_damage(params: Path) -> str | None:
    """What is wrong with the files of the OCDBT database under params/, or None. Reads the
    manifest and the B-tree nodes (a few KiB), not the arrays: a file the index refers to that
    is missing or shorter than the values it holds is found before any array is read."""
    if not (params / MANIFEST).is_file():
        return f"{params / MANIFEST} is missing (the index of the export's arrays)"
    store = ts.KvStore.open({"driver": "file", "path": f"{params}/"}).result()
    try:
        versions = ts.ocdbt.dump(store).result()["versions"]
    except ValueError as error:
        return f"{params / MANIFEST} cannot be read: {tensorstore_message(error)}"
    root = versions[-1]["root"].get("location") if versions else None  # None: no arrays
    pending = [root] if root else []
    data_needs: dict[Path, int] = {}  # data file → the end of the last value it holds
    while pending:
        location = pending.pop()
        node, needed = _referenced_file(params, location)
        problem = _shortfall(node, needed)
        if problem:
            return problem
        try:
            entries = ts.ocdbt.dump(store, location).result()["entries"]
        except ValueError as error:
            return f"{node} cannot be read: {tensorstore_message(error)}"
        for entry in entries:
            if "location" in entry:  # a child node
                pending.append(entry["location"])
            elif "indirect_value" in entry:  # an array chunk stored in a data file
                path, end = _referenced_file(params, entry["indirect_value"])
                data_needs[path] = max(data_needs.get(path, 0), end)
    for path, needed in sorted(data_needs.items()):
        problem = _shortfall(path, needed)
        if problem:
            return problem
    return None


# ---- Reading ----------------------------------------------------------------------------------


def stored_tree(params: Path):
    """The tree of shapes and dtypes orbax recorded for the stored arrays (params/_METADATA);
    a ValueError naming that file if it is missing or unreadable."""
    recorded = params / "_METADATA"
    if not recorded.is_file():
        raise ValueError(f"{recorded} is missing (orbax's list of the stored arrays)")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            item = checkpointer.metadata(params).item_metadata
    except Exception as error:  # orbax raises several types for a damaged _METADATA
        message = tensorstore_message(error)
        raise ValueError(
            f"{recorded} cannot be read ({type(error).__name__}: {message})"
        ) from error
    if item is None:  # what orbax returns for a _METADATA it cannot parse
        raise ValueError(f"{recorded} cannot be read as orbax's list of the stored arrays")
    return item.tree


def tensorstore_message(error: Exception) -> str:
    # Tensorstore errors end with a long JSON spec of the store; what failed comes first.
    return str(error).split(" [tensorstore_spec=")[0].split(" [source locations=")[0][:400]


def read_arrays(params: Path, names: list[str]) -> list[np.ndarray]:
    """The arrays stored under each name (orbax's dotted tree path), in their stored dtype, all
    read concurrently. Raises ValueError naming the first array that could not be read."""
    context = ts.Context()  # one cache of the database's index for every array
    database = {"driver": "ocdbt", "base": {"driver": "file", "path": f"{params}/"}}

    def spec(name):
        # As orbax reads them; a missing chunk is an error, never filled with zeros.
        return {
            "driver": "zarr",
            "kvstore": {**database, "path": name},
            "recheck_cached_data": False,
            "recheck_cached_metadata": False,
            "fill_missing_data_reads": False,
        }

    opening = [ts.open(spec(name), open=True, read=True, context=context) for name in names]
    stores = [_result(future, name) for future, name in zip(opening, names, strict=True)]
    reading = [store.read() for store in stores]
    return [_result(future, name) for future, name in zip(reading, names, strict=True)]


def _result(future, name: str):
    try:
        return future.result()
    except ValueError as error:
        raise ValueError(f"array {name}: {tensorstore_message(error)}") from error
