"""The documentation cannot rot: every public name on the API reference pages has a docstring, every setting has
help text, the pages' included tables and the README's links point at what exists, and every guide is in the nav.

`mkdocs build --strict` (.ci/run) checks the site's own links and references; these checks run in the default
suite, without mkdocs.
"""

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

from fdistill.lm.config import DistillArguments, FDistillConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# `::: fdistill.x.y` lines of the reference pages: what mkdocstrings renders.
TARGETS = sorted(
    {m for page in (DOCS / "reference").glob("*.md") for m in re.findall(r"^::: (\S+)", page.read_text(), re.M)}
)


def _resolve(target: str):
    """The module, class or function a `::: target` line names."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(target)


def _public_names(module) -> list[str]:
    """What the reference shows of a module: its ``__all__``, else the classes and functions defined in it."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_")
            and (inspect.isclass(v) or inspect.isfunction(v))
            and v.__module__ == module.__name__
        ]
    return [n for n in names if not n.startswith("__")]


def _undocumented(obj, qualname: str) -> list[str]:
    """``qualname`` and its public methods and properties (defined in fdistill) that have no docstring."""
    missing = [] if (inspect.getdoc(obj) or "").strip() else [qualname]
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if name.startswith("_"):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property) or inspect.isfunction(member):
                doc = inspect.getdoc(getattr(obj, name) if not isinstance(member, property) else member)
                if not (doc or "").strip():
                    missing.append(f"{qualname}.{name}")
    return missing


def test_reference_pages_name_the_public_modules():
    for wanted in ("fdistill.lm.trainer.FDistillTrainer", "fdistill.lm.config.FDistillConfig", "fdistill.divergences",
                   "fdistill.kernels", "fdistill.lm.objectives", "fdistill.lm.served", "fdistill.flows",
                   "fdistill.vocoder", "fdistill.diffusion"):  # fmt: skip
        assert wanted in TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_every_public_name_has_a_docstring(target):
    obj = _resolve(target)
    if inspect.ismodule(obj):
        assert (obj.__doc__ or "").strip(), f"module {target} has no docstring"
        missing = []
        for name in _public_names(obj):
            value = getattr(obj, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                missing += _undocumented(value, f"{target}.{name}")
    else:
        missing = _undocumented(obj, target)
    assert not missing, f"no docstring: {missing}"


def test_every_setting_has_help_text():
    own = [f for f in dataclasses.fields(FDistillConfig) if f.name in vars(FDistillConfig)["__annotations__"]]
    fields = [*dataclasses.fields(DistillArguments), *own]
    assert len(fields) > 40
    missing = [f.name for f in fields if len(f.metadata.get("help", "").split()) < 3]
    assert not missing, f"settings without help text (the reference shows it): {missing}"


def test_settings_table_lists_every_field():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from docs_hooks import settings_table
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    tables = settings_table("distill") + settings_table("trainer")
    for f in dataclasses.fields(FDistillConfig):
        if f.init and not f.name.startswith("_"):
            assert f'<span id="{f.name}">`{f.name}`</span>' in tables


def test_included_line_ranges_are_tables():
    """``--8<-- "file.md:A:B"`` includes lines A..B of a generated file: they must still be a table."""
    for page in DOCS.rglob("*.md"):
        for path, start, end in re.findall(r'^--8<-- "([^":]+):(\d+):(\d+)"', page.read_text(), re.M):
            lines = (DOCS / path).read_text().splitlines()[int(start) - 1 : int(end)]
            assert len(lines) == int(end) - int(start) + 1 and all(line.startswith("|") for line in lines), (
                f"{page.relative_to(ROOT)} includes {path}:{start}:{end}, which is no longer a table"
            )


def test_readme_links_exist():
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text()):
        if "://" not in link:
            assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_every_guide_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "guides").glob("*.md"):
        assert f"guides/{page.name}" in nav, f"docs/guides/{page.name} is not in mkdocs.yml's nav"
