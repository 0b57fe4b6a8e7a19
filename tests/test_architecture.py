"""The shape docs/architecture.md promises: rooms in layers, no import circle, no built-in named in core.

Imports are read from the source (module level and inside functions alike: a
circle through a lazy import is still a circle), so the test needs no torch.
"""

from __future__ import annotations

import ast
from pathlib import Path


import finetty.core

CORE = Path(finetty.core.__file__).parent
#: Lower rooms first. A module may import its own room and the rooms before it.
LAYERS = ("", "plugin", "data", "model", "recipe", "run", "memory", "train", "results", "cli", "plugin_api")
BUILTIN_COMPONENTS = {"full", "lora", "qlora", "dora", "ia3", "adapter", "prefix", "prompt",
                      "bnb-4bit", "bnb-8bit", "sft", "cpt", "dpo"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        found[".".join(["finetty", "core", *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "finetty.core":
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _room(module: str) -> str:
    parts = module.split(".")[2:]
    if not parts:
        return ""
    if len(parts) == 1 and parts[0] not in LAYERS:
        return ""  # errors, paths: the ground floor
    return parts[0]


def test_no_import_circle_among_core_modules():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_lower_rooms_never_import_higher_ones():
    wrong = []
    for module, targets in _graph().items():
        mine = LAYERS.index(_room(module))
        for target in targets:
            if LAYERS.index(_room(target)) > mine:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_core_module_lives_in_a_room():
    loose = [m for m in _modules() if _room(m) == "" and m.split(".")[-1] not in {"core", "errors", "paths", "text"}]
    assert not loose, loose


def test_core_names_no_builtin_plugin():
    """Core learns what it needs from descriptors: no ``method == "full"``, no import of finetty.plugins."""
    wrong = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = getattr(node, "module", None) or ""
                names = [mod] + [a.name for a in node.names]
                if any(n.startswith("finetty.plugins") for n in names):
                    wrong.append(f"{path.name}:{node.lineno} imports a built-in plugin")
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    values = [side] if isinstance(side, ast.Constant) else (
                        list(side.elts) if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [])
                    for value in values:
                        if isinstance(value, ast.Constant) and value.value in BUILTIN_COMPONENTS:
                            wrong.append(f"{path.relative_to(CORE)}:{node.lineno} compares with {value.value!r}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "finetty.plugins." in node.value:
                wrong.append(f"{path.relative_to(CORE)}:{node.lineno} names {node.value!r}")
    assert not wrong, "\n".join(wrong)


def test_the_graph_sees_lazy_imports():
    """A guard on the walker itself: a function-level import is an edge (launch imports standby lazily)."""
    assert "finetty.core.run.standby" in _graph()["finetty.core.run.launch"]
