"""Test-wide settings and fixtures: one intra-op thread (tiny models run faster without thread hand-offs), offline
Hub, Triton's CPU interpreter where there is no GPU (set before anything imports triton, which reads it once), the
`gpu` marker's skip without CUDA, and the fixtures several wings share (the tiny tokenizer, a saved teacher).

The test files live in one folder per wing (tests/core, tests/lm, ...); the helpers they share (tolerances.py,
toy_models.py, fake_vllm.py, two_processes.py) stay here, importable by name through pyproject's `pythonpath`."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(1)


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker`` — what a crafted stage file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason, on a machine without CUDA (the default run deselects them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked gpu: needs CUDA, and torch sees no CUDA device here")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_thread_after():
    """Put back the one intra-op thread after a test whose command set its own (`fdistill demo`, `paper-claims`,
    the vocoder and diffusion experiments call torch.set_num_threads): a process forked later (the crash-safety
    tests fork) hangs in its first parallel region when the parent's ran on more threads, which it does not have."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    """The tiny tokenizer of fdistill.testing, one per test module."""
    from fdistill import testing as tiny

    return tiny.tokenizer()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny 2-layer Llama teacher and its tokenizer saved in a folder, as `fdistill sample` / `train` read one."""
    from fdistill import testing as tiny

    path = tmp_path_factory.mktemp("teacher")
    tiny.llama(2, seed=0, init=0.15).save_pretrained(path)
    tiny.tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def crafted_pickle():
    """``write(path, marker)``: a pickle file whose loading would create ``marker`` (a crafted file in an output folder)."""

    def write(path, marker):
        import pickle

        with open(path, "wb") as f:
            pickle.dump({"state_dict": _RunsCode(marker), "net": _RunsCode(marker)}, f)

    return write
