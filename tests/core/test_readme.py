"""Every Python example in the README and in the documentation's pages (docs/**/*.md) runs as written.

A block that cannot run here (a GPU, several machines or the network) is marked by the line
``<!-- not-tested: REASON -->`` right above its fence: it is collected and reported as skipped with its reason,
which must say why, and such blocks stay few (`test_untested_blocks_are_few_and_say_why`).
A new guide needs nothing here: every ``docs/**/*.md`` page is read.
"""

import re
from pathlib import Path

import pytest
import transformers

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(?:<!-- not-tested: (?P<reason>.*?) -->\n)?```python\n(?P<code>.*?)```", flags=re.S)
BLOCKS = [
    (page.relative_to(ROOT).as_posix(), index, match["code"], match["reason"])
    for page in PAGES
    for index, match in enumerate(FENCE.finditer(page.read_text()))
]
transformers.logging.set_verbosity_error()


def test_readme_and_guides_have_examples():
    pages = {page for page, *_ in BLOCKS}
    assert "README.md" in pages
    assert len([p for p in pages if p.startswith("docs/guides/")]) >= 8


def test_untested_blocks_are_few_and_say_why():
    untested = [(page, index, reason) for page, index, _, reason in BLOCKS if reason is not None]
    assert all(len(reason.split()) >= 3 for *_, reason in untested), untested
    assert len(untested) <= len(BLOCKS) // 10, f"{len(untested)} of {len(BLOCKS)} Python blocks are not tested"


@pytest.mark.parametrize(
    ("page", "index", "code", "reason"), BLOCKS, ids=[f"{page}[{index}]" for page, index, *_ in BLOCKS]
)
def test_example_runs(page, index, code, reason, tmp_path, monkeypatch):
    if reason is not None:
        pytest.skip(f"{page} python block {index} is marked not-tested: {reason}")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, f"{page}[python block {index}]", "exec"), namespace)
    if "loss" in namespace:  # the maths block (per-step terms) and the diffusion block (a scalar PD loss)
        assert namespace["loss"].ndim == 0
        if "per_step" in namespace:
            assert namespace["per_step"].shape == (2, 5)
    if "trainer" in namespace:
        assert namespace["trainer"].state.global_step == 2
