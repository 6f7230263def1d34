"""The package's shape: modules and classes of a readable size, imports in layers.

Run as a script to print module sizes and the import graph (``python tests/test_layout.py``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlx_sched_callbacks"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules that ``name`` imports, anywhere in it (a circle through an
    import inside a function is still a circle). A module's own packages are not counted:
    Python imports them first anyway."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = submodules or [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and not (name + ".").startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once, as the list of modules along it."""
    seen, on_path, found = set(), [], []

    def visit(node):
        if node in on_path:
            found.append(on_path[on_path.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for other in sorted(graph[node]):
            visit(other)
        on_path.pop()

    for node in sorted(graph):
        visit(node)
    return found


def long_classes() -> list[tuple[str, str, int]]:
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    found.append((name, node.name, lines))
    return found


def test_no_module_is_too_long():
    sizes = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES} == {}


def test_no_class_is_too_long():
    assert long_classes() == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_packages_say_what_they_export():
    missing = [
        name
        for name, path in modules().items()
        if path.name == "__init__.py" and "__all__" not in path.read_text()
    ]
    assert missing == []


def main() -> None:
    graph = import_graph()
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        uses = ", ".join(sorted(m.removeprefix("mlx_sched_callbacks.") for m in graph[name]))
        print(f"{lines:5d}  {name.removeprefix('mlx_sched_callbacks.') or '(package)'}  <- {uses}")
    for module, cls, lines in long_classes():
        print(f"class over {MAX_CLASS_LINES} lines: {module}.{cls} ({lines})")
    for cycle in cycles(graph):
        print("import circle: " + " -> ".join(cycle))


if __name__ == "__main__":
    sys.exit(main())
