"""mkdocs hooks of the documentation site (mkdocs.yml ``hooks:``): the settings tables, generated from the code.

A page holding ``<!-- fdistill:settings distill -->`` gets a table of every `fdistill.DistillArguments` field (name,
type, default and its ``help`` text); ``<!-- fdistill:settings trainer -->`` the fields `FDistillConfig` adds or
inherits from transformers' `Seq2SeqTrainingArguments`. The tables are made at build time from the dataclass fields,
so the reference cannot fall behind the code; tests/core/test_docs.py checks that every field has help text.
"""

from __future__ import annotations

import dataclasses
import html
import re

MARKER = re.compile(r"<!-- fdistill:settings (distill|trainer) -->")


def _cell(text) -> str:
    """Markdown table cell: pipes escaped, one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text) -> str:
    """An inline code cell as HTML: a backslash-escaped pipe would show inside a Markdown code span."""
    return "<code>" + html.escape(" ".join(str(text).split())).replace("|", "&#124;") + "</code>"


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _code(repr(f.default))
    if f.default_factory is not dataclasses.MISSING:
        return _code(repr(f.default_factory()))
    return "required"


def _type(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def settings_table(which: str) -> str:
    """The markdown table of ``which`` settings: ``"distill"`` (DistillArguments) or ``"trainer"`` (the rest of
    FDistillConfig's fields)."""
    from fdistill.lm.config import DistillArguments, FDistillConfig

    distill = {f.name for f in dataclasses.fields(DistillArguments)}
    fields = [
        f
        for f in dataclasses.fields(FDistillConfig)
        if f.init and ((f.name in distill) == (which == "distill")) and not f.name.startswith("_")
    ]
    if which == "trainer":  # FDistillConfig's own fields first, then the inherited ones by name
        fields.sort(key=lambda f: (f.name not in vars(FDistillConfig).get("__annotations__", {}), f.name))
    rows = ["| setting | type | default | what it does |", "|---|---|---|---|"]
    for f in fields:
        help_text = f.metadata.get("help", "") or "(transformers: see its TrainingArguments documentation)"
        rows.append(
            f'| <span id="{f.name}">`{f.name}`</span> | {_code(_type(f))} | {_default(f)} | {_cell(help_text)} |'
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs) -> str:
    """mkdocs hook: replace each settings marker of a page with its table."""
    return MARKER.sub(lambda m: settings_table(m.group(1)), markdown)
