"""Measures of the fdistill package's code: the largest modules, the longest functions, refusals, the import graph.

    python scripts/code_measures.py            # the whole report
    python scripts/code_measures.py --top 30   # longer lists

It prints (a) the line counts of the largest modules (as ``wc -l`` counts them), (b) the longest functions and
methods (``end_lineno - lineno + 1`` of the ``def``, decorators not counted), (c) how many ``raise`` statements raise
a plain ``ValueError`` and how many an ``InputError`` (directly or through ``fdistill.errors.invalid``), and (d) the
import graph between fdistill's modules (a package ``__init__`` that Python runs on the way to a submodule counts
as imported): its cycles (strongly connected components of more than one module), once for module-level imports
(what runs when a module is imported) and once counting function-level imports too, and the "upward" imports —
a module importing a name from the package root ``fdistill`` or from its own parent package's ``__init__``.

Only source text is read (``ast``): nothing of fdistill is imported. tests/core/test_layering.py asserts the
layering rules on the same graph (``import_graph``).
"""

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fdistill"


@dataclass(frozen=True)
class Import:
    """One import of an fdistill module by another: where it is, what it reaches, and when it runs."""

    source: str  # the importing module, dotted ("fdistill.lm.hub")
    target: str  # the fdistill module or package it reaches ("fdistill" for the package root's names)
    line: int
    level: str  # "module" (runs on import), "function" (runs when the function does) or "type" (TYPE_CHECKING only)
    names: tuple[str, ...]  # the names taken from the target (``import fdistill``: the attributes used, fdistill.X)
    implicit: bool = False  # a package __init__ that Python runs before the named submodule (not named in the code)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` for every .py file of the package (``__init__.py`` gives the package's name)."""
    files = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_with_level(tree: ast.Module):
    """Yield ``(import node, level)`` for every import statement, level as in `Import.level`."""

    def walk(node, level):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, level
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, "function")
            elif isinstance(child, ast.If) and _is_type_checking(child) and level == "module":
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "type")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "module")
            else:
                yield from walk(child, level)

    yield from walk(tree, "module")


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    """The absolute module name of a ``from ... import`` (relative ones resolved against ``source``)."""
    if node.level == 0:
        return node.module or ""
    base = source.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start at its package
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _attributes_of(tree: ast.Module, name: str) -> tuple[str, ...]:
    """The attributes ``name.X`` read anywhere in ``tree`` (what ``import name`` is used for), sorted."""
    found = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == name
    }
    return tuple(sorted(found))


def _with_parent_packages(edge: Import, source_is_package: bool) -> list[Import]:
    """``edge`` and an implicit edge to each package Python runs on the way to its target (``import a.b.c`` runs
    ``a/b/__init__``), except the root ``fdistill`` (run before any fdistill module) and the source's own packages."""
    own = edge.source if source_is_package else edge.source.rpartition(".")[0]
    parts = edge.target.split(".")
    edges = [edge]
    for depth in range(2, len(parts)):
        package = ".".join(parts[:depth])
        if package != edge.source and not (own == package or own.startswith(package + ".")):
            edges.append(Import(edge.source, package, edge.line, edge.level, (), implicit=True))
    return edges


def import_graph(root: Path = ROOT) -> list[Import]:
    """Every import of one fdistill module by another, resolved to the module or package it reaches, with the
    package ``__init__`` files Python runs on the way (`Import.implicit`).

    ``from pkg import name`` reaches the module ``pkg.name`` where there is one, else ``pkg`` itself (a name its
    ``__init__`` defines); ``import fdistill`` reaches the package root, for the attributes the module reads."""
    files = module_files(root)
    explicit = []
    for source, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, level in _imports_with_level(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE and alias.name in files:
                        used = _attributes_of(tree, PACKAGE) if alias.name == PACKAGE and not alias.asname else ()
                        explicit.append((Import(source, alias.name, node.lineno, level, used), is_package))
                continue
            module = _absolute(node, source, is_package)
            if module.split(".")[0] != PACKAGE or module not in files:
                continue
            from_package = [a.name for a in node.names if f"{module}.{a.name}" not in files]
            for alias in node.names:
                if f"{module}.{alias.name}" in files:
                    explicit.append((Import(source, f"{module}.{alias.name}", node.lineno, level, ()), is_package))
            if from_package:
                explicit.append((Import(source, module, node.lineno, level, tuple(from_package)), is_package))
    edges = [e for edge, is_package in explicit for e in _with_parent_packages(edge, is_package)]
    return [e for e in edges if e.source != e.target]


def cycles(edges: list[Import], levels: tuple[str, ...] = ("module",)) -> list[list[str]]:
    """The strongly connected components of more than one module in the graph of ``edges`` at ``levels``
    (Tarjan's algorithm), each sorted, largest first."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.level in levels:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found, key=lambda c: (-len(c), c))


def upward_imports(edges: list[Import]) -> list[Import]:
    """Imports of a name from the package root ``fdistill`` or from the importer's own parent package's
    ``__init__`` (a package's own ``__init__`` importing from its modules is downward and not listed)."""
    upward = []
    for e in (e for e in edges if not e.implicit):
        parent = e.source.rpartition(".")[0]
        if e.target == PACKAGE and e.source != PACKAGE:
            upward.append(e)
        elif e.target == parent and parent != PACKAGE:
            upward.append(e)
    return upward


def line_counts(root: Path = ROOT) -> list[tuple[int, str]]:
    """``(lines, path)`` of every module, largest first (lines as ``wc -l`` counts them: newline characters)."""
    rows = [(p.read_bytes().count(b"\n"), str(p.relative_to(root))) for p in module_files(root).values()]
    return sorted(rows, key=lambda r: (-r[0], r[1]))


def function_lengths(root: Path = ROOT) -> list[tuple[int, str]]:
    """``(lines, "path:line qualified.name")`` of every function and method, longest first."""
    rows = []

    def visit(node, path, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                rows.append((child.end_lineno - child.lineno + 1, f"{path}:{child.lineno} {name}"))
                visit(child, path, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, path, f"{prefix}{child.name}.")
            else:
                visit(child, path, prefix)

    for path in module_files(root).values():
        visit(ast.parse(path.read_text(encoding="utf-8")), path.relative_to(root), "")
    return sorted(rows, key=lambda r: (-r[0], r[1]))


def raise_counts(root: Path = ROOT) -> dict[str, int]:
    """How many ``raise`` statements raise ``ValueError`` and how many ``InputError`` (``raise invalid(...)`` too)."""
    counts = {"ValueError": 0, "InputError": 0}
    for path in module_files(root).values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = exc.id if isinstance(exc, ast.Name) else exc.attr if isinstance(exc, ast.Attribute) else ""
            if name == "ValueError":
                counts["ValueError"] += 1
            elif name in ("InputError", "invalid"):
                counts["InputError"] += 1
    return counts


def describe(edge: Import) -> str:
    """One line for an import: where it is, when it runs, what it takes from where."""
    return f"{edge.source}:{edge.line} ({edge.level}) imports {', '.join(edge.names) or edge.target} from {edge.target}"


def import_report(edges: list[Import]) -> list[str]:
    """Part (d): the cycles at module level, then with function-level imports too, then the upward imports."""
    out = []
    for title, levels in (("module-level", ("module",)), ("module- and function-level", ("module", "function"))):
        found = cycles(edges, levels)
        out += [f"(d) import cycles, {title} imports: {len(found)}"]
        out += ["         {" + ", ".join(c) + "}" for c in found]
        out += [""]
    named = [e for e in edges if not e.implicit]
    counted = ", ".join(f"{sum(e.level == lvl for e in named)} {lvl}-level" for lvl in ("module", "function", "type"))
    out += [f"    imports between fdistill modules: {counted} (type = under TYPE_CHECKING)", ""]
    upward = upward_imports(edges)
    out += [f"(d) upward imports (a name from the package root or from the parent package): {len(upward)}"]
    return out + ["         " + describe(e) for e in upward]


def report(top: int = 15, root: Path = ROOT) -> str:
    """The four measures as text."""
    out = [f"(a) the {top} largest modules (lines)"]
    out += [f"{n:7d}  {path}" for n, path in line_counts(root)[:top]]
    out += ["", f"(b) the {top} longest functions and methods (lines)"]
    out += [f"{n:7d}  {where}" for n, where in function_lengths(root)[:top]]
    counts = raise_counts(root)
    out += ["", "(c) raises"] + [f"{n:7d}  raise {name}" for name, n in counts.items()] + [""]
    return "\n".join(out + import_report(import_graph(root)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15, help="how many modules and functions to list (15)")
    print(report(parser.parse_args().top))


if __name__ == "__main__":
    main()
