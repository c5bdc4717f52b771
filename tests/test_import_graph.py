"""No import cycle between rasa_gpt3's modules, counting every import statement (also those inside functions and
`if TYPE_CHECKING:` blocks): a shared piece lives below the modules that use it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import rasa_gpt3

PACKAGE = Path(rasa_gpt3.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the rasa_gpt3 modules it imports (a package's `__init__` counts as the package)."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in files else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
        graph[name] &= set(files)
        graph[name].discard(name)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every import cycle found by a depth-first walk, each as the path that closes it."""
    found: List[List[str]] = []
    done: Set[str] = set()

    def visit(name: str, path: List[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                found.append(path[path.index(target) :] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    return found


def test_no_module_imports_one_that_imports_it_back():
    # a package importing its own submodules is no cycle; a submodule importing its package's __init__ would be
    graph = {name: {t for t in targets if not t.startswith(f"{name}.")} for name, targets in import_graph().items()}
    assert cycles(graph) == []


def test_the_walk_finds_a_cycle_where_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_graph()["rasa_gpt3.data.export_files"] >= {"rasa_gpt3.data.exported_task", "rasa_gpt3.errors"}
