"""The package's layout holds: no import cycle among ymxb's modules (imports inside functions
count: they are how cycles used to be hidden), and the host side imports nothing of the driver's."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ymxb"


def _modules() -> dict:
    """{module name: its file} for every module of ymxb."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict) -> set:
    """The ymxb modules a file imports, anywhere in it."""
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named.add(node.module)
            named.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in named if name in modules and name != "ymxb"}


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_no_module_of_ymxb_is_part_of_an_import_cycle():
    graph = _graph()
    state, cycles = {}, []

    def visit(name, trail):
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append(trail[trail.index(other):] + [other] if other in trail else [name, other])
            elif other not in state:
                visit(other, trail + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_host_side_imports_nothing_of_the_driver_side():
    graph = _graph()
    reached, todo = set(), [m for m in graph if m.startswith("ymxb.host.")]
    while todo:
        name = todo.pop()
        for other in graph[name] - reached:
            reached.add(other)
            todo.append(other)
    assert not {m for m in reached if m.startswith(("ymxb.driver", "ymxb.api", "ymxb.plan", "ymxb.cli"))}
