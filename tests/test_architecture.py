"""The layers of kcl hold: no module imports one above it, no cycle, no private name crosses a module.

docs/architecture.md draws the layers; `LAYERS` below is the same list as
data, lowest first. A module may import modules of its own layer or of
lower ones; inside a layer the imports must not form a cycle. Imports
inside functions count as much as those at the top of a file, and so does
`import kcl` followed by `kcl.<module>` in the code. `kcl/__init__.py`,
which only gathers the public modules, is the one exception.

A private name (one leading underscore) is used only in the module that
defines it: `from kcl.x import _y` and `x._y` on another kcl module are
refused. What another module needs is public.

The check reads the source with `ast`; it imports nothing, so it runs in a
fraction of a second.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "kcl"

# Lowest first. A package (`kcl.data`, `kcl.methods`) is one entry: its
# modules share its layer.
LAYERS = [
    ["kcl.checks", "kcl.files", "kcl.interrupts", "kcl.archives", "kcl.catalog", "kcl.plotting", "kcl.distribute", "kcl.data"],
    ["kcl.layers", "kcl.losses", "kcl.queues", "kcl.momentum", "kcl.instances", "kcl.optimizers", "kcl.guard"],
    ["kcl.augment", "kcl.backbones", "kcl.heads", "kcl.negatives", "kcl.callbacks", "kcl.presets"],
    ["kcl.methods"],
    ["kcl.convert", "kcl.zoo", "kcl.recipes", "kcl.export", "kcl.evaluation", "kcl.eval",
     "kcl.robustness", "kcl.pictures", "kcl.report", "kcl.bench", "kcl.training"],
    ["kcl.cli"],
]

# Ratchets of what issue 24 has not split yet: see the tests below.
WHOLE_PACKAGE_USERS = ["kcl.cli"]
MAX_LINES = 550
TOO_LONG = {
    "kcl.augment": 1114,
    "kcl.cli": 1854,
    "kcl.losses": 1210,
    "kcl.methods.base": 583,
    "kcl.methods.contrastive": 603,
    "kcl.negatives": 768,
    "kcl.pictures": 939,
    "kcl.robustness": 955,
}


def module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def unit(module):
    """The entry of LAYERS a module belongs to (`kcl.methods.simclr` -> `kcl.methods`)."""
    for layer in LAYERS:
        for entry in layer:
            if module == entry or module.startswith(entry + "."):
                return entry
    return None


def layer_of(module):
    entry = unit(module)
    return next(i for i, layer in enumerate(LAYERS) if entry in layer)


def resolve(module, name):
    """`kcl.a.b.c` -> the longest prefix that is a kcl module (`kcl.a.b` when `c` is a name in it)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate, ".".join(parts[end:])
    return None, name


def imports(module):
    """Yields (imported kcl module, name used from it or '', line) for every import and `kcl.x` use."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    aliases = {}  # local name -> kcl module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "kcl" or alias.name.startswith("kcl."):
                    target, _ = resolve(module, alias.name)
                    aliases[alias.asname or alias.name.split(".")[0]] = target if alias.asname else "kcl"
                    yield target, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            elif node.module and (node.module == "kcl" or node.module.startswith("kcl.")):
                base = node.module
            else:
                continue
            for alias in node.names:
                target, rest = resolve(module, f"{base}.{alias.name}")
                if not rest:  # a module
                    aliases[alias.asname or alias.name] = target
                yield target, rest, node.lineno
    for node in ast.walk(tree):  # kcl.x.y attribute chains and alias._private uses
        if isinstance(node, ast.Attribute):
            chain = []
            value = node
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                dotted = ".".join([aliases[value.id], *reversed(chain)])
                target, rest = resolve(module, dotted)
                if target:
                    yield target, rest.split(".")[0], node.lineno


def edges():
    for module in MODULES:
        for target, name, line in imports(module):
            if target and target != module and not target.startswith(module + "."):
                yield module, target, name, line


def test_every_module_has_a_layer():
    assert [m for m in MODULES if unit(m) is None and m != "kcl"] == []


def test_no_module_imports_one_above_it():
    wrong = sorted(
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)}), line {line}"
        for module, target, _, line in edges()
        if module != "kcl" and target != "kcl" and layer_of(target) > layer_of(module)
    )
    assert wrong == []


def test_no_import_cycles():
    graph = {}
    for module, target, _, _ in edges():
        if module != "kcl" and target != "kcl" and unit(module) != unit(target):
            graph.setdefault(unit(module), set()).add(unit(target))
    for module, target, _, _ in edges():  # inside a package too
        if module != "kcl" and target != "kcl" and unit(module) == unit(target):
            graph.setdefault(module, set()).add(target)
    cycles = []
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_uses_the_whole_package():
    """`import kcl` inside the library hides what a module needs: import the modules.

    The CLI still does (issue 24 splits it into one module per command,
    each importing what it uses); no other module may start.
    """
    wrong = sorted({m for m, t, name, _ in edges() if t == "kcl" and m != "kcl" and not name.startswith("__")})
    assert wrong == sorted(WHOLE_PACKAGE_USERS)


def test_no_private_name_crosses_a_module():
    wrong = sorted(
        f"{module} uses {target}.{name}, line {line}"
        for module, target, name, line in edges()
        if name.startswith("_") and not name.startswith("__")
    )
    assert wrong == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_library_file_is_too_long(module):
    """A newcomer reads a file in one sitting: `MAX_LINES` at most.

    The files of `TOO_LONG` are still to be split along their seams (issue
    24); each may shrink but not grow, and leaves the list once it fits.
    """
    lines = len(MODULES[module].read_text().splitlines())
    if module in TOO_LONG:
        assert MAX_LINES < lines <= TOO_LONG[module], f"{module}: {lines} lines (recorded {TOO_LONG[module]})"
    else:
        assert lines <= MAX_LINES, f"{module}: {lines} lines"
