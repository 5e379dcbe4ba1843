"""The package's import structure: no circles between seglab's modules, counting the
imports inside functions too (they hide a circle from Python, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

import seglab

PACKAGE = Path(seglab.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The seglab modules `path` imports, anywhere in it (type-checking-only ones left
    out: they never run)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name in modules:
                found.add(name)
    return found - {_module_name(path)}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for child in sorted(graph.get(name, ())):
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state and (found := visit(child)):
                return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_no_module_of_seglab_imports_itself_through_others():
    graph = _graph()
    assert "seglab.train" in graph and "seglab.checkpoint" in graph["seglab.train"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


REPO = Path(__file__).resolve().parents[1]


def _layout_rows(readme: str) -> list[tuple[str, str]]:
    """(directory, row) for each row of the README's layout table: the directory of the
    first path in its first cell (a path ending in / is itself the directory)."""
    section = readme[readme.index("Layout, one job per module") :]
    rows = []
    for line in section.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if not line.startswith("| `"):
            continue
        first = line.split("`")[1]
        rows.append((first.rstrip("/") if first.endswith("/") else str(Path(first).parent), line))
    return rows


def _unlisted(readme: str, modules: list[Path]) -> list[str]:
    rows = _layout_rows(readme)
    return [
        str(module)
        for module in modules
        if not any(
            directory == str(module.parent)
            and f"`{module.name}`" in row.replace(f"`{module}`", f"`{module.name}`")
            for directory, row in rows
        )
    ]


def test_the_readme_layout_names_every_module():
    """A reader looking for the code of a concern finds its module in the README's
    layout table (package markers and `__main__` aside)."""
    modules = sorted(
        path.relative_to(REPO)
        for folder in ("src", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    )
    assert len(modules) > 50
    readme = (REPO / "README.md").read_text()
    assert _unlisted(readme, modules) == []
    # The check sees a module missing from the table.
    assert _unlisted(readme.replace("`budget.py`, ", ""), modules) == ["src/seglab/budget.py"]
