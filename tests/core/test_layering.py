"""The package's layering (issue 23): no import cycle among fdistill's modules at module level, and the rings import
inwards only — no module imports a name from the package root ``fdistill`` (the root re-exports, it is not a source)
and none outside ``fdistill.cli`` imports the command line. The graph is scripts/code_measures.py's, read from the
source text (``ast``), package ``__init__`` files Python runs on the way to a submodule included."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "code_measures.py"


def _code_measures():
    spec = importlib.util.spec_from_file_location("code_measures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


measures = _code_measures()
EDGES = measures.import_graph()


def _under(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _shown(edges) -> list[str]:
    return [measures.describe(e) for e in edges]


def test_the_graph_sees_the_package():
    """The scan finds the modules and their imports (else the assertions below would hold vacuously)."""
    modules = {e.source for e in EDGES}
    assert {"fdistill", "fdistill.lm.trainer", "fdistill.flows.experiment", "fdistill.cli"} <= modules
    assert any(e.source == "fdistill" and e.target == "fdistill.lm.trainer" for e in EDGES)
    assert sum(e.level == "function" for e in EDGES) > 0 and sum(e.level == "module" for e in EDGES) > 100


def test_cycles_are_found_in_a_made_up_graph():
    """The cycle finder itself, on a graph with one 3-cycle, one 2-cycle and a tail (a function-level edge aside)."""
    edge = measures.Import
    edges = [edge("a", "b", 1, "module", ()), edge("b", "c", 1, "module", ()), edge("c", "a", 1, "module", ())]
    edges += [edge("c", "d", 1, "module", ()), edge("d", "e", 1, "module", ()), edge("e", "d", 1, "function", ())]
    assert measures.cycles(edges) == [["a", "b", "c"]]
    assert measures.cycles(edges, ("module", "function")) == [["a", "b", "c"], ["d", "e"]]


def test_no_import_cycle_at_module_level():
    assert measures.cycles(EDGES) == []


def test_no_module_imports_from_the_package_root():
    """The wings (lm, flows, vocoder, diffusion, evaluation), the kernels and the core modules import what they
    need from its own module, never ``from fdistill import X`` nor ``import fdistill`` then ``fdistill.X``: the root
    imports them, so theirs would be a cycle through it. Only the command line, the outer ring, may."""
    upward = [e for e in EDGES if e.target == "fdistill" and not e.implicit and not _under(e.source, ("fdistill.cli",))]
    assert _shown(upward) == []


def test_nothing_outside_the_command_line_imports_it():
    inward = [e for e in EDGES if _under(e.target, ("fdistill.cli",)) and not _under(e.source, ("fdistill.cli",))]
    assert _shown(inward) == []
