"""The package's shape, read from its source with ``ast`` (nothing is imported):

* no import circle between modules — module-level imports (those that run when the module is imported,
  class bodies and ``if``/``try`` blocks at module level included) must form no circle at all; imports
  inside functions are counted too, against the short list of known circles below (which may only shrink);
* no import from a lower layer to a higher one (the layers: :data:`LAYERS`, documented in
  ``docs/architecture.md``), module-level and function-level alike;
* no CalcJob, parser or calcfunction module defines an upper-case constant whose value the science layer
  also defines (a mirror: import it from ``battgen.contracts`` instead);
* the science layer imports no ``aiida``, the AiiDA layer no ``torch`` (statically here; the subprocess
  checks of what really gets imported are in ``tests/test_contracts.py``).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("battgen", "aiida_battgen")

# Lowest first. A module belongs to the layer of the longest prefix that names it; it may import its own
# layer and the layers below, never one above. The same table is in docs/architecture.md ("Layers").
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("battgen.errors", "battgen.contracts", "battgen.checkpoint", "battgen.columns",
                    "battgen.progress", "battgen.known_warnings", "battgen.devices", "battgen")),
    ("data", ("battgen.batch", "battgen.models")),
    ("sources", ("battgen.sources",)),
    ("physics", ("battgen.stability", "battgen.electrochem", "battgen.dft", "battgen.known_materials",
                 "battgen.mlip", "battgen.md", "battgen.channels", "battgen.insertion", "battgen.anode",
                 "battgen.screen", "battgen.select", "battgen.report")),
    ("learned models", ("battgen.generate", "battgen.predictors", "battgen.evaluate", "battgen.mlip.nequip_training")),
    ("campaign", ("battgen.campaign",)),
    ("command line", ("battgen.cli",)),
    ("aiida data", ("aiida_battgen", "aiida_battgen.data", "aiida_battgen.tools.progress")),
    ("aiida calculations", ("aiida_battgen.calculations",)),
    ("aiida parsers", ("aiida_battgen.parsers",)),
    ("aiida calcfunctions", ("aiida_battgen.calculations.functions",)),
    ("aiida work chains", ("aiida_battgen.workchains",)),
    ("aiida tools and CLI", ("aiida_battgen.tools", "aiida_battgen.cli")),
)

# Known circles, listed by their sorted modules; the tests fail when a new one appears and when a listed one
# is gone (shrink the lists). The one left is click's registration idiom: the command group lives in the CLI
# package and its submodules import it to add their commands, which the package imports to register them.
KNOWN_MODULE_LEVEL_CIRCLES: set[tuple[str, ...]] = {("aiida_battgen.cli", "aiida_battgen.cli.doctor")}
KNOWN_FUNCTION_LEVEL_CIRCLES: set[tuple[str, ...]] = {
    ("aiida_battgen.cli", "aiida_battgen.cli.campaign", "aiida_battgen.cli.doctor", "aiida_battgen.cli.status")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _is_package(name: str) -> bool:
    return _modules()[name].name == "__init__.py"


def _resolve(node: ast.ImportFrom | ast.Import, current: str) -> list[str]:
    """Our modules an import statement loads (``from a.b import c`` is ``a.b.c`` when that is a module)."""
    modules = _modules()
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    base = node.module or ""
    if node.level:
        package = current if _is_package(current) else current.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    if len(found) < len(node.names) and base in modules:
        found.append(base)
    return found


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(imports run at import time, imports inside functions) of one module, as our module names."""
    tree = ast.parse(_modules()[name].read_text(encoding="utf-8"))
    module_level: set[str] = set()
    function_level: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # typing only: never run
            if isinstance(child, ast.Import | ast.ImportFrom):
                (function_level if in_function else module_level).update(_resolve(child, name))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    module_level.discard(name)
    function_level.discard(name)
    return module_level, function_level - module_level


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@cache
def _graph(include_functions: bool) -> dict[str, set[str]]:
    graph = {}
    for name in _modules():
        module_level, function_level = _imports(name)
        graph[name] = module_level | function_level if include_functions else module_level
    return graph


def _circles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[tuple[str, ...]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(tuple(sorted(component)))
    return sorted(found)


def _layer(name: str) -> int:
    best, best_length = None, -1
    for position, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = position, len(prefix)
    assert best is not None, f"{name} is in no layer: add it to LAYERS (and docs/architecture.md)"
    return best


# --- the checks ---------------------------------------------------------------------------------------------
def test_the_import_reader_sees_known_edges():
    """The graph is not empty by accident: edges that exist today are found (module- and function-level)."""
    module_level = _graph(False)
    assert "battgen.contracts.relax" in module_level["aiida_battgen.calculations.relax"]
    assert "battgen.md.trajectory" in module_level["battgen.md.analysis"]
    assert "battgen.errors" in module_level["battgen.contracts.base"]
    assert "battgen.md.analysis" in _graph(True)["battgen.md.run"]  # imported inside run_md_command
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_no_import_circle_at_module_level():
    circles = set(_circles(_graph(False)))
    new = sorted(circles - KNOWN_MODULE_LEVEL_CIRCLES)
    assert not new, "module-level import circles: " + "; ".join(" <-> ".join(c) for c in new)
    assert not KNOWN_MODULE_LEVEL_CIRCLES - circles, "a known circle is gone: remove it from the list"
    assert not any(module.startswith("battgen") for circle in circles for module in circle)


def test_function_level_circles_only_the_known_ones():
    circles = set(_circles(_graph(True)))
    new = sorted(circles - KNOWN_FUNCTION_LEVEL_CIRCLES)
    gone = sorted(KNOWN_FUNCTION_LEVEL_CIRCLES - circles)
    assert not new, "new import circle(s) through function-level imports: " + "; ".join(" <-> ".join(c) for c in new)
    assert not gone, f"circle(s) no longer there, remove them from KNOWN_FUNCTION_LEVEL_CIRCLES: {gone}"


def test_every_module_is_in_a_layer_and_imports_no_higher_layer():
    upward = []
    for name, imported in sorted(_graph(True).items()):
        for target in sorted(imported):
            if _layer(target) > _layer(name):
                upward.append(f"{name} ({LAYERS[_layer(name)][0]}) -> {target} ({LAYERS[_layer(target)][0]})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def _external_imports(package: str, module_level_only: bool = False) -> dict[str, set[str]]:
    """Top-level package names each module of ``package`` imports (anywhere, or only at import time)."""
    found: dict[str, set[str]] = {}
    for name, path in _modules().items():
        if not name.startswith(package + ".") and name != package:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = _import_time_nodes(tree) if module_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                found.setdefault(name, set()).update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.setdefault(name, set()).add(node.module.split(".")[0])
    return found


def _import_time_nodes(tree: ast.AST):
    """Every node outside function bodies (what runs when the module is imported)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node)
                    if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))


def test_science_layer_never_imports_aiida():
    bad = sorted(name for name, roots in _external_imports("battgen").items() if "aiida" in roots)
    assert not bad, f"battgen modules importing aiida: {bad}"


def test_aiida_layer_never_imports_torch_or_the_mlip_stack():
    heavy = {"torch", "chgnet", "sevenn", "matgl", "nequip", "dgl", "alignn"}
    bad = {name: sorted(roots & heavy) for name, roots in _external_imports("aiida_battgen").items() if roots & heavy}
    assert not bad, f"aiida_battgen modules importing the ML stack: {bad}"
    # battgen modules the AiiDA layer imports must stay free of it too (transitively, at module level)
    reached, todo = set(), [t for n, ts in _graph(False).items() if n.startswith("aiida_battgen") for t in ts]
    while todo:
        name = todo.pop()
        if name in reached or not name.startswith("battgen"):
            continue
        reached.add(name)
        todo.extend(_graph(False)[name])
    science = _external_imports("battgen", module_level_only=True)
    bad_science = {name: sorted(science.get(name, set()) & heavy) for name in reached
                   if science.get(name, set()) & heavy}
    assert not bad_science, f"battgen modules the AiiDA layer imports at module level pull in torch: {bad_science}"


# --- mirrored constants --------------------------------------------------------------------------------------
def _constants(package: str, skip: tuple[str, ...] = ()) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for name, path in _modules().items():
        if not name.startswith(package) or name.startswith(skip):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper() and len(target.id) > 3:
                    try:
                        value = ast.literal_eval(node.value)
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        continue
                    if repr(value) not in ("None", "True", "False", "0", "1"):
                        found.setdefault((target.id, repr(value)), []).append(name)
    return found


MIRROR_CHECKED = ("aiida_battgen.calculations", "aiida_battgen.parsers")


def test_no_calcjob_or_parser_module_mirrors_a_science_constant():
    science = _constants("battgen")
    aiida = _constants("aiida_battgen")
    mirrors = sorted(f"{key[0]} = {key[1][:50]} in {module} (also {science[key][0]})"
                     for key, modules in aiida.items() if key in science
                     for module in modules if module.startswith(MIRROR_CHECKED))
    assert not mirrors, "constants defined again in the AiiDA layer (import them from battgen.contracts):\n" + \
        "\n".join(mirrors)


def test_the_mirror_check_can_fail(tmp_path):
    """The constant reader finds a literal constant (so an empty result above means no mirror, not no reading)."""
    science = _constants("battgen")
    assert ("RELAX_STATUSES", repr(("converged", "not_converged", "exploded", "unsupported_element"))) not in science
    assert any(name == "CHECKPOINT_FILENAME" for name, _ in science)


@pytest.mark.parametrize("module", ["aiida_battgen.calculations.md", "aiida_battgen.calculations.relax",
                                    "aiida_battgen.calculations.si_anode"])
def test_calcjob_modules_validate_with_the_contracts(module):
    """The CalcJob modules of the commands that matter most import their command's contract."""
    assert any(target.startswith("battgen.contracts.") for target in _graph(False)[module])
