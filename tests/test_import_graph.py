"""keras_hpdm's modules import each other one way: the intra-package import graph has no cycle.

The graph is read from the source with `ast`, so it sees every import, module-level and
function-level alike: a function-level import closes a cycle as surely as a top-level one,
it only postpones the failure to the first call (and hides it from readers).

How imports become edges (module names as Python spells them; a package is its `__init__`):

- `import keras_hpdm.a.b` and `from keras_hpdm.a import b` (or the relative forms) where
  `keras_hpdm.a.b` is a module or package: an edge to `keras_hpdm.a.b` alone. The parent
  packages that Python initialises on the way (`keras_hpdm`, `keras_hpdm.a`) are not edges:
  a package `__init__` that re-exports its submodules would otherwise close a cycle with
  each of them, though no import order can go wrong that way.
- `from keras_hpdm.a import name` where `name` is not a module (a class or function the
  `__init__` re-exports): an edge to the package `keras_hpdm.a`, whose own imports are edges
  in turn. So a submodule that imports a re-exported name from its own package is a cycle,
  as it is at run time.
- `importlib.import_module(...)` with a computed name, such as the lazy `__getattr__` of
  `keras_hpdm/__init__.py` that loads submodules on first attribute access, is not an edge:
  it runs after the package is initialised and cannot be read statically.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE = "keras_hpdm"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path, root):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root=ROOT):
    """module name -> (path, is_package) for every .py file of the package."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        found[_module_name(path, root)] = (path, path.name == "__init__.py")
    return found


def _resolve(node, module, is_package):
    """The absolute module a `from ... import` node names (relative levels resolved)."""
    if not node.level:
        return node.module
    base = module.split(".")
    base = base if is_package else base[:-1]  # a package's `.` is itself
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root=ROOT):
    """module -> sorted list of intra-package modules it imports (see the module docstring)."""
    modules = _modules(root)
    graph = {}
    for module, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(node, module, is_package)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.add(sub if sub in modules else source)
        graph[module] = sorted(t for t in targets if t in modules and t != module)
    return graph


def find_cycles(graph):
    """One cycle (as a list of modules, first == last) per strongly connected component."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v):  # Tarjan's algorithm; the graph has ~100 nodes, recursion is fine.
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph, component):
    """A shortest cycle through the alphabetically first module of `component`."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in graph[path[-1]]:
            if w == start:
                return path + [start]
            if w in component and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "keras_hpdm.data.pipeline" in graph  # the walk found the tree
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in keras_hpdm:\n" + "\n".join(
        "  " + " -> ".join(c) for c in cycles
    )


@pytest.mark.parametrize(
    "files, cycle",
    [
        # Function-level, `from pkg import module` form.
        ({"a.py": "def f():\n    from pkg import b\n", "b.py": "from pkg import a\n"},
         ["pkg.a", "pkg.b", "pkg.a"]),
        # `import pkg.x.y` and relative forms.
        ({"a.py": "import pkg.sub.c\n", "sub/__init__.py": "",
          "sub/c.py": "from ..a import thing\n"}, ["pkg.a", "pkg.sub.c", "pkg.a"]),
        # A submodule that imports a name its own package `__init__` re-exports.
        ({"__init__.py": "from pkg.a import f\n", "a.py": "def f():\n    from pkg import g\n"},
         ["pkg", "pkg.a", "pkg"]),
    ],
)
def test_the_check_finds_cycles(tmp_path, files, cycle):
    """The check can fail: each of these little packages has exactly one cycle."""
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert find_cycles(import_graph(root)) == [cycle]


def test_reexporting_init_is_not_a_cycle(tmp_path):
    """`pkg/__init__.py` importing its submodules, which import each other, is fine."""
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("from pkg.a import f\nfrom pkg.b import g\n")
    (root / "a.py").write_text("def f():\n    pass\n")
    (root / "b.py").write_text("from pkg import a\nfrom pkg.a import f as g\n")
    assert find_cycles(import_graph(root)) == []


def _modules_importing_a_lazy_submodule(root=ROOT):
    """Modules with `from keras_hpdm import <submodule>` at the top level: the package's
    `__getattr__` (which loads every module) answers that form when the submodule is not
    yet loaded."""
    modules, found = _modules(root), []
    for module, (path, _) in modules.items():
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.ImportFrom) and not node.level
                    and node.module == PACKAGE
                    and any(f"{PACKAGE}.{a.name}" in modules for a in node.names)):
                found.append(module)
                break
    return found


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "torch") != "torch",
                    reason="import machinery, not the backend: runs in the torch pass")
def test_modules_that_import_a_submodule_by_name_import_first():
    """`python -c "import keras_hpdm.models.backend_quirks"` failed with a circular import:
    its `from keras_hpdm import distribute` went through the package's lazy `__getattr__`,
    which loaded every module, back to the half-made one. Each such module is imported
    first in a fresh interpreter, and the rest still loads (classes registered)."""
    modules = _modules_importing_a_lazy_submodule()
    assert "keras_hpdm.models.backend_quirks" in modules
    for module in modules:
        code = (f"import {module}, keras, sys\n"
                "assert 'keras_hpdm.models.patch_diffusion_model' in sys.modules\n"
                "assert keras.saving.get_registered_object("
                "'keras_hpdm>PatchDiffusionModel') is not None\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "KERAS_BACKEND": "torch"}, timeout=300)
        assert proc.returncode == 0, f"{module}:\n{proc.stderr[-1500:]}"
