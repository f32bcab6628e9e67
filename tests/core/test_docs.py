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


def _anchors(page: Path) -> set[str]:
    """The anchors of a page: explicit ``{#id}``s, ``<span id=…>``s, and the headings' slugs (mkdocs' toc)."""
    text = page.read_text()
    anchors = set(re.findall(r"\{#([\w-]+)\}", text)) | set(re.findall(r'id="([\w-]+)"', text))
    for heading in re.findall(r"^#+ (.+?)(?: \{#[\w-]+\})?$", text, re.M):
        anchors.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower()))
    return anchors


def test_refusals_name_pages_and_sections_that_exist():
    """Every ``see("page", "anchor")`` in the code names a page of docs/ and a section of it."""
    calls = []
    for source in (ROOT / "fdistill").rglob("*.py"):
        calls += re.findall(r"""see\(\s*["']([\w/-]+)["']\s*(?:,\s*["']([\w-]+)["'])?\s*\)""", source.read_text())
    assert len(calls) >= 6
    for page, anchor in calls:
        path = DOCS / f"{page}.md"
        assert path.is_file(), f"see({page!r}): {path} does not exist"
        if anchor:
            assert anchor in _anchors(path), f"see({page!r}, {anchor!r}): no such section in {path}"


def test_refusals_of_settings_point_at_their_row_of_the_reference():
    from fdistill.cli.entry import RESEARCH_COMMANDS
    from fdistill.errors import InputError

    checks = (ROOT / "fdistill" / "lm" / "config_checks.py").read_text()
    fields = {f.name for f in dataclasses.fields(FDistillConfig)}
    assert set(re.findall(r'refuse\(\s*\w+,\s*"(\w+)"', checks)) <= fields  # each is a row (anchor) of config.md
    with pytest.raises(InputError, match=r"use 'stepwise' .* \(see docs/reference/config\.md#js_mixture\)"):
        DistillArguments(js_mixture="both")
    for _, _, extra in RESEARCH_COMMANDS.values():  # require_extra's see("guides/" + extra)
        assert (DOCS / "guides" / f"{extra}.md").is_file()


def test_help_names_pages_that_exist(capsys):
    from fdistill.cli.entry import COMMAND_DOCS, RESEARCH_COMMANDS, main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    named = re.findall(r"docs/[\w/.-]+\.md", text) + [f"docs/{page}" for page in COMMAND_DOCS.values()]
    assert len(named) >= 3
    for path in named:
        assert (ROOT / path).is_file(), f"fdistill --help names {path}, which does not exist"
    assert {"sample", "train", "evaluate", "demo", "paper-claims", *RESEARCH_COMMANDS} <= set(COMMAND_DOCS)
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "documentation: docs/guides/evaluation.md" in capsys.readouterr().out
