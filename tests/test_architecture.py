"""The shape of the package, read from its sources: no import circle, methods that do
not import each other, and shared layers that never name a method."""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "adverse_vision")

#: The built-in methods and the words that name them in code or prose.
METHOD_NAMES = {"detection", "togethernet", "dnhl", "bdlf", "depth_dehaze"}
METHOD_WORDS = re.compile(r"togethernet|dn-?hl|bdlf(?!usion)|depth_dehaze|depth-guided|"
                          r"[\"']detection[\"']", re.I)
#: Where a method may not be named.
SHARED = ("data", "convert", "trainer.py", "evaluate.py", "predict.py", "bench.py",
          "samples.py", "versus.py", "workdir.py", "state.py", "config.py", "tabulate.py",
          "breakdown.py", "breakdown_torch.py", "ops/attention.py")


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in the file (imports
    inside functions included), resolved to the modules that exist."""
    path = MODULES[module]
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _is_parent_package(a: str, b: str) -> bool:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``: those arrows from a
    package's own modules up to the package are not circles of the code."""
    return a.startswith(b + ".")


def test_no_import_circle():
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if _is_parent_package(v, w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


def _method_of(module: str):
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "methods" and parts[2] in METHOD_NAMES:
        return parts[2]
    return None


def test_methods_do_not_import_each_other():
    """A method builds on the plain detection method at most (a base class)."""
    for module, imported in GRAPH.items():
        mine = _method_of(module)
        if mine is None:
            continue
        others = {_method_of(m) for m in imported} - {None, mine, "detection"}
        assert not others, f"{module} imports the method(s) {sorted(others)}"


def _shared_files():
    for entry in SHARED:
        path = os.path.join(PACKAGE, entry)
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.endswith(".py"):
                    yield os.path.join(path, name)
        else:
            yield path


@pytest.mark.parametrize("path", list(_shared_files()), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_shared_code_names_no_method(path):
    text = open(path).read()
    hits = [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for m in METHOD_WORDS.finditer(text)]
    assert not hits, f"{os.path.relpath(path, ROOT)} names a method: {hits[:5]}"


def test_the_checks_can_fail():
    """The readers above see what they are meant to see."""
    assert "adverse_vision.methods" in GRAPH["adverse_vision.methods.detection"]
    assert "adverse_vision.data.catalog" in GRAPH["adverse_vision.methods.detection"]
    assert METHOD_WORDS.search('if cfg.method == "detection":')
    assert METHOD_WORDS.search("the TogetherNet decoder") and METHOD_WORDS.search("DN-HL")
    assert METHOD_WORDS.search("Depth-guided dehazing")
    assert not METHOD_WORDS.search("load_official('bdlfusion', ...)")
