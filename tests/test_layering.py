"""The import direction of docs/architecture.md §3: models never import the trainers'
infrastructure, not even through the modules they import (such as soraj/exports.py), and only
the entry point soraj/__main__.py imports the command line (soraj/cli.py).

Imports are read from the source with `ast`, so the test needs nothing from the code it checks.
"""

import ast
from pathlib import Path

SORAJ = Path(__file__).resolve().parent.parent / "soraj"
# The trainers and what only they use: training checkpoints, preemption and non-finite
# handling, the mesh rules.
FORBIDDEN = ("soraj.checkpoint", "soraj.fault_tolerance", "soraj.sharding")
FORBIDDEN_PREFIXES = ("soraj.train",)  # soraj.train, soraj.train_vae, ...


def module_file(name: str) -> Path | None:
    """The file of a soraj module or package (None: not part of soraj)."""
    if name != "soraj" and not name.startswith("soraj."):
        return None
    path = SORAJ.parent.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def module_name(path: Path) -> str:
    parts = path.relative_to(SORAJ.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_names(source: str, package: str) -> set[str]:
    """Every module an import statement anywhere in the source names, including `from soraj
    import checkpoint` (soraj.checkpoint) and relative imports, at any depth of the code."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: level 1 is the package itself, 2 its parent, ...
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def reachable_from(start: list[Path]) -> dict[str, str]:
    """soraj modules reachable from the start files → the module that imports each first."""
    seen = {module_name(path): "(start)" for path in start}
    pending = list(start)
    while pending:
        path = pending.pop()
        for name in sorted(imported_names(path.read_text(), package_of(path))):
            target = module_file(name)
            if target is None or module_name(target) in seen:
                continue
            seen[module_name(target)] = module_name(path)
            pending.append(target)
    return seen


def test_the_reader_sees_imports_of_every_form():
    """The import reader itself, on a module of soraj.models with each form of import."""
    source = (
        "import soraj.checkpoint\n"
        "from soraj import train_vae, exports\n"
        "from . import vae\n"
        "from ..data.shapes import ShapesSource\n"
        "def f():\n"
        "    from soraj.fault_tolerance import Preempted\n"
    )
    names = imported_names(source, "soraj.models")
    assert {
        "soraj.checkpoint",
        "soraj.train_vae",
        "soraj.exports",
        "soraj.models.vae",
        "soraj.data.shapes",
        "soraj.fault_tolerance",
    } <= names
    assert module_file("soraj.train_vae") == SORAJ / "train_vae.py"
    assert module_file("soraj.models") == SORAJ / "models" / "__init__.py"
    assert module_file("soraj.models.vae.VideoVAE") is None  # a name, not a module
    assert module_file("numpy") is None


def test_models_never_import_the_trainers_infrastructure():
    models = sorted((SORAJ / "models").glob("*.py"))
    assert len(models) > 5
    reached = reachable_from(models)
    bad = {
        name: importer
        for name, importer in reached.items()
        if name in FORBIDDEN or name.startswith(FORBIDDEN_PREFIXES)
    }
    chains = []
    for name in bad:
        chain = [name]
        while reached[chain[-1]] != "(start)":
            chain.append(reached[chain[-1]])
        chains.append(" ← ".join(chain))
    assert not bad, "soraj/models reaches the trainers' infrastructure: " + "; ".join(chains)


def test_only_the_entry_point_imports_the_cli():
    """The CLI parses and dispatches; no module under soraj/ but __main__ imports it, in any
    form (`import soraj.cli`, `from soraj import cli`, `from . import cli`, in a function)."""
    importers = sorted(
        path.relative_to(SORAJ).as_posix()
        for path in SORAJ.rglob("*.py")
        if "soraj.cli" in imported_names(path.read_text(), package_of(path))
    )
    assert importers == ["__main__.py"]


def test_the_reader_sees_the_cli_imported_in_every_form():
    forms = (
        "import soraj.cli",
        "from soraj import cli",
        "from soraj.cli import main",
        "def f():\n    from . import cli",
    )
    for source in forms:
        assert "soraj.cli" in imported_names(source, "soraj"), source
    assert "soraj.cli" in imported_names("from .. import cli", "soraj.eval")
    assert "soraj.cli" not in imported_names("from soraj import client", "soraj")
