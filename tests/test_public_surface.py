"""The shape of the library: the layers' import rule, and one API in two forms."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import buildruntime
from buildruntime import runtime as async_runtime
from buildruntime import sync

SRC = Path(buildruntime.__file__).parent


def _imports(path: Path) -> set[str]:
    """The buildruntime modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # `from buildruntime import diagnosis` imports a module too.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("buildruntime")}


def test_the_informer_imports_only_the_port_and_itself() -> None:
    """Data flows one way: the informer knows the cluster port, nothing of the domain."""
    allowed_prefixes = ("buildruntime.informer", "buildruntime.cluster.port")
    for path in sorted((SRC / "informer").glob("*.py")):
        modules = {
            name
            for name in _imports(path)
            if (SRC.parent / Path(*name.split("."))).with_suffix(".py").exists()
            or (SRC.parent / Path(*name.split("."))).is_dir()
        }
        strays = sorted(m for m in modules if not m.startswith(allowed_prefixes))
        assert strays == [], f"{path.name} imports {strays}"


def test_the_public_names_are_no_informer_types() -> None:
    for name in buildruntime.__all__:
        module = getattr(getattr(buildruntime, name), "__module__", "")
        assert not module.startswith("buildruntime.informer"), name
    hints = inspect.get_annotations(sync.Build.step_states, eval_str=True)
    assert not hints["return"].__args__[0].__module__.startswith("buildruntime.informer")


def _parameters(function: object) -> list[tuple[str, object, object]]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return [
        (p.name, p.kind, p.default)
        for p in signature.parameters.values()
        if p.name not in ("self", "cls", "backend")
    ]


def test_the_blocking_facade_has_the_async_runtimes_methods_and_parameters() -> None:
    async_api = {
        name: member
        for name, member in inspect.getmembers(async_runtime.Runtime)
        if (not name.startswith("_") or name == "__init__") and callable(member)
    }
    sync_api = {
        name: member for name, member in inspect.getmembers(sync.Runtime) if name in async_api
    }
    assert sorted(sync_api) == sorted(async_api)
    for name, member in async_api.items():
        assert _parameters(sync_api[name]) == _parameters(member), name
    assert "backend" in inspect.signature(sync.Runtime).parameters
