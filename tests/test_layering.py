"""The package layering: roles sit on `common`, never on each other, and no modules import in a circle.

Why: a role that imports another role's module drags that role's dependencies into its process (an actor
must not load torch for a learner helper) and ties code that runs on different hosts together; a circle
makes import order matter. Every import counts here, module-level and deferred ones alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actor", "learner", "replay", "common", "tools")
# What each package may import of the project's packages (besides itself).
ALLOWED = {
    "common": set(),
    "actor": {"common"},
    "learner": {"common"},
    "replay": {"common"},
    "tools": {"common", "learner", "actor"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_roles_import_only_common_and_common_imports_no_role() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in _imports().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0] and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert not wrong, wrong


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph = _imports()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, [" -> ".join(c) for c in circles]
