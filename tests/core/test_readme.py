"""Every Python example in the README runs as written."""

import re
from pathlib import Path

import pytest
import transformers

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
transformers.logging.set_verbosity_error()


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
    if "loss" in namespace:  # the maths block (per-step terms) and the diffusion block (a scalar PD loss)
        assert namespace["loss"].ndim == 0
        if "per_step" in namespace:
            assert namespace["per_step"].shape == (2, 5)
    if "trainer" in namespace:
        assert namespace["trainer"].state.global_step == 2
