"""The pipeline shows in the imports: no module imports one of a later stage, and no import cycle (imports
inside functions count: a deferred import still ties the two modules together)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "llmclone"
# sources -> dataset -> models -> training -> the clone -> what uses a clone; shared helpers are stage 0
# (memory: built from the dataset, rendered by the models' chat format, used by training and everything after)
STAGES = {"errors": 0, "placeholders": 0, "terminal": 0, "manifest": 0, "interrupts": 0, "sources": 1, "dataset": 2,
          "config": 3, "models": 3, "memory": 3.5, "training": 4, "clone": 5, "compat": 5, "demo": 6, "export": 6,
          "serving": 6, "telegram": 6, "evaluation": 6, "cli": 7, "__main__": 7, "__init__": 7}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmclone"):
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = subs if node.module == "llmclone" else [node.module, *subs]  # the package's own
                # __init__ is not what `from llmclone import placeholders` depends on
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("llmclone")]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def _stage(module: str) -> float:
    return STAGES[module.split(".")[1] if "." in module else "__init__"]


def test_no_import_from_a_later_stage() -> None:
    late = sorted(f"{a} imports {b}" for a, deps in _imports().items() for b in deps if _stage(b) > _stage(a))
    assert late == []


def test_no_import_cycle() -> None:
    graph = _imports()
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
