"""The house's layers, enforced by reading every module's imports.

Imports point down only: a module may import its own layer (without a cycle) or any lower one,
function-level imports included (they run too, just later); only imports under
``if TYPE_CHECKING:`` are left out, since they never run. The order is written here once and once
in docs/architecture.md, and the test checks that the two say the same. The UI has one more rule:
it reaches the science only through the session layer (plus the pure figure functions, the config
schema and the two leaf utilities).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unlearnviz"

# Top to bottom. Each room is a module or package of unlearnviz; the root package counts as "base".
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry", ("unlearnviz.cli", "unlearnviz.ui", "unlearnviz.__main__")),
    ("session", ("unlearnviz.session", "unlearnviz.bundle", "unlearnviz.registry", "unlearnviz.state_folder")),
    ("work", ("unlearnviz.report", "unlearnviz.sweep", "unlearnviz.calibrate", "unlearnviz.planner",
              "unlearnviz.attacks", "unlearnviz.analysis", "unlearnviz.evaluation", "unlearnviz.generation",
              "unlearnviz.plots")),
    ("records", ("unlearnviz.runs", "unlearnviz.config")),
    ("methods", ("unlearnviz.methods",)),
    ("data", ("unlearnviz.data",)),
    ("model", ("unlearnviz.model",)),
    ("base", ("unlearnviz.errors", "unlearnviz.io", "unlearnviz")),
]
# The entry rooms are independent front ends: neither imports the other.
ENTRY_ROOMS = ("unlearnviz.cli", "unlearnviz.ui")
# What the UI may import besides itself: Session is its one door to the science.
UI_ALLOWED = ("unlearnviz.ui", "unlearnviz.session", "unlearnviz.bundle", "unlearnviz.registry", "unlearnviz.state_folder",
              "unlearnviz.config", "unlearnviz.plots", "unlearnviz.errors", "unlearnviz.io")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (whose else branch does run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, list[str]]]:
    """(imported unlearnviz module, line, names taken) for each import statement that runs.

    ``from unlearnviz import plots`` counts as an import of ``unlearnviz.plots``; importing a
    submodule's implied parent packages does not count (Python runs them, but they are not a choice
    the importer made).
    """
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == "unlearnviz"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "unlearnviz":
                continue
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    found.append((sub, node.lineno, []))
                else:
                    plain.append(alias.name)
            if plain:
                found.append((target, node.lineno, plain))
    return found


def room_of(module: str) -> str:
    rooms = [r for _, rs in LAYERS for r in rs if module == r or module.startswith(r + ".")]
    if not rooms:
        raise AssertionError(f"{module} is in no room of LAYERS: place it in tests/test_layers.py and "
                             f"docs/architecture.md")
    return max(rooms, key=len)


def layer_index(module: str) -> int:
    room = room_of(module)
    return next(i for i, (_, rs) in enumerate(LAYERS) if room in rs)


def import_graph() -> dict[str, list[tuple[str, int, list[str]]]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one member, or a node importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_room():
    for name in all_modules():
        room_of(name)  # raises with the module's name


def test_imports_point_down():
    bad = []
    for name, imports in import_graph().items():
        for target, line, _ in imports:
            if layer_index(target) < layer_index(name):
                bad.append(f"{name}:{line} imports {target} ({LAYERS[layer_index(name)][0]} -> "
                           f"{LAYERS[layer_index(target)][0]})")
    assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_front_ends_do_not_import_each_other():
    bad = [f"{name}:{line} imports {target}" for name, imports in import_graph().items() for target, line, _ in imports
           if room_of(name) in ENTRY_ROOMS and room_of(target) in ENTRY_ROOMS and room_of(name) != room_of(target)]
    assert not bad, "\n".join(bad)


def test_ui_reaches_the_science_only_through_the_session():
    bad = [f"{name}:{line} imports {target}" for name, imports in import_graph().items()
           if room_of(name) == "unlearnviz.ui" for target, line, _ in imports if room_of(target) not in UI_ALLOWED]
    assert not bad, "the UI imports past the session layer:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = import_graph()
    by_module = {n: {t for t, _, _ in imps if t != n} for n, imps in graph.items()}
    cycles = strongly_connected(by_module)
    assert not cycles, "import cycles between modules: " + "; ".join(" <-> ".join(c) for c in cycles)
    by_room: dict[str, set[str]] = {}
    for n, targets in by_module.items():
        by_room.setdefault(room_of(n), set()).update(room_of(t) for t in targets if room_of(t) != room_of(n))
    cycles = strongly_connected(by_room)
    assert not cycles, "import cycles between rooms: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_private_name_crosses_a_module_boundary():
    bad = [f"{name}:{line} takes {', '.join(p for p in names if p.startswith('_'))} from {target}"
           for name, imports in import_graph().items() for target, line, names in imports
           if target != name and any(p.startswith("_") and not p.startswith("__") for p in names)]
    assert not bad, "\n".join(bad)


def documented_layers() -> list[tuple[str, tuple[str, ...]]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers:begin -->(.*?)<!-- layers:end -->", text, re.S)
    assert block, "docs/architecture.md has no <!-- layers:begin --> ... <!-- layers:end --> table"
    rows = []
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0] or set(cells[0]) <= {"-", ":"} or cells[0] == "layer":
            continue
        rows.append((cells[0], tuple(re.findall(r"`(unlearnviz[\w.]*)`", cells[1]))))
    return rows


def test_the_docs_state_the_same_layers():
    assert documented_layers() == LAYERS


@pytest.mark.parametrize("source, expected", [
    ("from unlearnviz.methods import engine\n", ["unlearnviz.methods.engine"]),
    ("def f():\n    from unlearnviz.analysis import probes\n", ["unlearnviz.analysis.probes"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from unlearnviz.session import Session\n", []),
    ("from ..model.loading import LoadedModel\n", ["unlearnviz.model.loading"]),
    ("import unlearnviz.ui.app\n", ["unlearnviz.ui.app"]),
])
def test_the_reader_sees_every_kind_of_import(tmp_path, source, expected):
    """The reader itself could miss imports; these are the forms the package uses."""
    fake = tmp_path / "probe.py"
    fake.write_text(source)
    found = imports_of("unlearnviz.methods.probe", fake, all_modules())
    assert [t for t, _, _ in found] == expected


def test_an_upward_import_would_be_caught():
    """The rule fires on a real violation: data importing evaluation."""
    assert layer_index("unlearnviz.evaluation.scoring") < layer_index("unlearnviz.data.synthetic")
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_the_readme_layout_names_every_room():
    """README's "How the code is laid out" lists exactly the package's top-level modules and folders."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How the code is laid out"):]
    block = section[section.index("```") + 3:]
    block = block[:block.index("```")]
    listed = {line.split()[0].rstrip("/") for line in block.splitlines() if line.startswith("unlearnviz/")}
    actual = {f"unlearnviz/{p.name}" for p in PACKAGE.iterdir()
              if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert listed == actual, f"README lists {sorted(listed - actual)} that do not exist, misses {sorted(actual - listed)}"
