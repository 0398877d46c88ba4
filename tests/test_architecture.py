"""The package's layers, as the README draws them: imports only point down.

runtime <- core <- search <- stages -> tracking (tracking <- core only); pipeline and cli on
top; bench beside cli. runtime (signals, logging, store URIs) is the only place that touches
process state. Read from the source (every ``import`` statement, lazy ones included), so a new
module cannot slip past it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tfi"

# What each part of tfi must not import: tfi parts (by prefix) and third-party libraries.
FORBIDDEN = {
    "tfi.runtime": ("tfi.core", "tfi.search", "tfi.tracking", "tfi.stages", "tfi.pipeline",
                    "tfi.cli", "tfi.bench", "mlflow", "optuna"),
    "tfi.core": ("tfi.search", "tfi.tracking", "tfi.stages", "tfi.pipeline", "tfi.cli",
                 "tfi.bench", "mlflow", "optuna", "signal", "threading", "multiprocessing",
                 "logging.config"),
    "tfi.search": ("tfi.tracking", "tfi.stages", "tfi.pipeline", "tfi.cli", "tfi.bench", "mlflow"),
    "tfi.tracking": ("tfi.search", "tfi.stages", "tfi.pipeline", "tfi.cli", "tfi.bench"),
    "tfi.stages": ("tfi.pipeline", "tfi.cli", "tfi.bench"),
    "tfi.pipeline": ("tfi.cli", "tfi.bench"),
    "tfi.bench": ("tfi.cli",),
}  # fmt: skip
# Exceptions to the rules above: runtime raises core's error types.
ALLOWED = {"tfi.runtime": ("tfi.core.errors",)}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    rules = [banned for layer, banned in FORBIDDEN.items() if _matches(module, layer)]
    imported = _imports(MODULES[module], module)
    allowed = [ok for layer, oks in ALLOWED.items() if _matches(module, layer) for ok in oks]
    broken = sorted(
        name
        for name in imported
        for banned in rules
        for prefix in banned
        if _matches(name, prefix) and not any(_matches(name, ok) for ok in allowed)
    )
    assert not broken, f"{module} imports {broken}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_owns(module):
    tree = ast.parse(MODULES[module].read_text())
    if MODULES[module].name != "__main__.py":
        assert ast.get_docstring(tree), f"{module} has no docstring"


def test_only_the_tracking_layer_imports_mlflow():
    importers = sorted(
        module
        for module, path in MODULES.items()
        if any(_matches(name, "mlflow") for name in _imports(path, module))
    )
    assert all(_matches(module, "tfi.tracking") for module in importers), importers


# Public names that start with an underscore: namedtuple methods and os._exit.
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_exit"}


def test_no_private_optuna_or_mlflow_names():
    """No ``optuna.storages._heartbeat``, ``study._storage``, ``trial._trial_id`` and the like."""
    offenders = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                private = [part for part in node.module.split(".") if part.startswith("_")]
                names = [a.name for a in node.names if a.name.startswith("_")]
                if node.module.split(".")[0] in ("optuna", "mlflow") and (private or names):
                    offenders.append(f"{module}: from {node.module} import ...")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in PUBLIC_UNDERSCORED
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                offenders.append(f"{module}:{node.lineno}: .{node.attr}")
    assert not offenders, offenders


# What changes the process, not just computes: signal handlers, environment variables, the
# working directory, the root logger's handlers.
PROCESS_STATE = {"os.environ", "os.putenv", "os.chdir", "signal.signal", "logging.basicConfig"}


def test_nothing_in_core_touches_process_state():
    offenders = []
    for module, path in MODULES.items():
        if not _matches(module, "tfi.core"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and f"{node.value.id}.{node.attr}" in PROCESS_STATE
            ):
                offenders.append(f"{module}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not offenders, offenders


# tfi.core's parts, in the order they may import each other: each only the ones before it;
# the modules at core's root (classes, errors, keys) none of them.
CORE_PARTS = ("config", "data", "labels", "selection", "evaluation", "model", "live")


def test_the_parts_of_core_import_only_the_parts_before_them():
    offenders = []
    for module, path in MODULES.items():
        if not _matches(module, "tfi.core") or module == "tfi.core":
            continue
        part = module.split(".")[2]
        allowed = CORE_PARTS[: CORE_PARTS.index(part) + 1] if part in CORE_PARTS else ()
        for name in _imports(path, module):
            if _matches(name, "tfi.core") and name.count(".") >= 2:
                used = name.split(".")[2]
                if used in CORE_PARTS and used not in allowed:
                    offenders.append(f"{module} imports {name}")
    assert not offenders, offenders
    assert {path.parent.name for path in (PACKAGE / "core").glob("*/__init__.py")} == set(
        CORE_PARTS
    )
