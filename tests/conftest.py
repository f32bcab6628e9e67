"""Test-wide settings: one intra-op thread (tiny models run faster without thread hand-offs), offline Hub, and
Triton's CPU interpreter where there is no GPU (set before anything imports triton, which reads it once)."""

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
