"""Loading models and data: every bad path or file is one clear InputError before any work; content fingerprints."""

import time

import pandas as pd
import pytest
import torch
import transformers

import fdistill.lm.loading as loading
from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.lm.loading import (
    file_sha256,
    is_hub_name,
    load_data,
    load_model_and_tokenizer,
    model_fingerprint,
    prepare_prompts,
    tokenizer_fingerprint,
)

transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FDISTILL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if a name is handed to the Hub loaders (local files go to datasets' json/csv/parquet readers)."""
    read_file = loading.load_dataset

    def only_files(builder, *args, **kwargs):
        assert builder in ("json", "csv", "parquet"), f"asked the Hub for {builder!r}"
        return read_file(builder, *args, **kwargs)

    def refuse(name, *args, **kwargs):
        raise AssertionError(f"asked the Hub for {name!r}")

    monkeypatch.setattr(loading, "load_dataset", only_files)
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", refuse)


@pytest.mark.parametrize(
    "name,hub",
    [
        ("gpt2", True),
        ("HuggingFaceTB/SmolLM2-135M", True),
        ("Qwen/Qwen2.5-0.5B", True),
        ("missing.jsonl", False),
        ("data/train.csv", False),
        ("./teacher", False),
        ("../teacher", False),
        ("/abs/teacher", False),
        ("~/teacher", False),
        ("a/b/c", False),
        ("dir\\file", False),
        ("model.gguf", False),
    ],
)
def test_local_looking_names_are_never_hub_names(name, hub):
    assert is_hub_name(name) is hub


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda d: "missing.jsonl", "data 'missing.jsonl' does not exist"),
        (lambda d: str(d / "nope" / "train"), "does not exist"),
        (lambda d: "./no_such_folder", "does not exist"),
        (lambda d: _write(d / "empty.jsonl", ""), "is empty (0 bytes)"),
        (lambda d: _write(d / "blank.jsonl", "\n\n"), "could not read data"),
        (lambda d: _write(d / "bad.jsonl", "{not json\n"), "JSON parse error"),
        (lambda d: _write(d / "header.csv", "prompt\n"), "could not read data"),
        (lambda d: _write(d / "notes.txt", "hello"), "has the suffix '.txt'"),
        (lambda d: _write(d / "bad.parquet", "xx"), "could not read data"),
    ],
)
def test_bad_data_files_are_one_clear_error_at_once(tmp_path, no_hub, make, fragment):
    source = make(tmp_path)
    start = time.perf_counter()
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as error:
        load_data(source)
    assert repr(source) in str(error.value)
    assert time.perf_counter() - start < 5


def test_data_with_no_rows_or_no_data_files(tmp_path):
    pd.DataFrame({"prompt": pd.Series([], dtype=str)}).to_parquet(tmp_path / "none.parquet")
    with pytest.raises(InputError, match="none.parquet"):
        load_data(str(tmp_path / "none.parquet"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="doesn't contain any data files"):
        load_data(str(tmp_path / "empty_dir"))
    model_dir = tmp_path / "model"
    tiny.llama(1, seed=0).save_pretrained(model_dir)
    with pytest.raises(InputError, match="holds a model"):
        load_data(str(model_dir))
    tiny.dataset(3).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(InputError, match="split"):
        from datasets import DatasetDict

        DatasetDict({"train": tiny.dataset(2)}).save_to_disk(str(tmp_path / "dict"))
        load_data(str(tmp_path / "dict"), split="test")
    assert len(load_data(str(tmp_path / "saved"))) == 3


@pytest.mark.parametrize(
    "rows,fragment",
    [
        ("prompt,reference\nthe cat,a\n,b\n", "row 1: None is missing"),
        ("prompt,reference\nthe cat,a\n   ,b\n", "row 1: '   ' is blank text"),
        ("prompt,reference\n1,a\n2,b\n", "row 0: 1 is a number, not text"),
    ],
)
def test_unusable_prompts_in_a_csv_name_row_and_column(tmp_path, rows, fragment):
    path = _write(tmp_path / "p.csv", rows)
    with pytest.raises(InputError, match=fragment) as error:
        prepare_prompts(load_data(path), prompt_column="prompt")
    assert "column 'prompt'" in str(error.value)


def test_prompt_forms_that_are_fine_and_the_prefix(tmp_path):
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": [[4, 5]], "x": [1]})
    assert prepare_prompts(data, prompt_column="prompt")["prompt"] == [[4, 5]]  # token ids stay allowed
    with pytest.raises(InputError, match="prompt_prefix='t: ' cannot be applied"):
        prepare_prompts(data, prompt_column="prompt", prompt_prefix="t: ")
    with pytest.raises(InputError, match=r"no column 'text' \(it has \['prompt', 'x'\]\)"):
        prepare_prompts(data, prompt_column="text")
    nested = Dataset.from_dict({"translation": [{"en": "the cat", "ro": "pisica"}]})
    with pytest.raises(InputError, match="flatten"):
        prepare_prompts(nested, prompt_column="translation.en")
    assert prepare_prompts(nested, prompt_column="translation.en", flatten=True, prompt_prefix="t: ")[
        "translation.en"
    ] == ["t: the cat"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    tiny.llama(1, seed=0).save_pretrained(path)
    tiny.tokenizer().save_pretrained(path)
    return path


def test_bad_model_paths_are_one_clear_error_without_the_hub(tmp_path, model_dir, no_hub):
    (tmp_path / "empty").mkdir()
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    cases = [
        (dict(name_or_path="./no_teacher"), "model folder './no_teacher' does not exist"),
        (dict(name_or_path=str(tmp_path / "empty")), "has no config.json"),
        (dict(name_or_path=str(tmp_path / "w.gguf")), "is a GGUF file: pass its folder"),
        (
            dict(name_or_path=str(tmp_path), gguf_file="other.gguf"),
            r"gguf_file='other.gguf' is not in the folder.*w.gguf",
        ),
        (dict(name_or_path=str(model_dir), dtype="float8"), "dtype='float8' is not valid"),
        (dict(name_or_path="pkg:no_such_package_xyz"), "is not installed"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(InputError, match=fragment):
            load_model_and_tokenizer(**kwargs)


def test_a_model_folder_without_tokenizer(tmp_path):
    tiny.llama(1, seed=0).save_pretrained(tmp_path / "m")
    with pytest.raises(InputError, match="could not load the tokenizer of folder .*save the tokenizer"):
        load_model_and_tokenizer(str(tmp_path / "m"))


def test_file_digests_are_remembered_by_path_size_mtime(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(str(path))
    reads = []
    monkeypatch.setattr(loading, "open", lambda *a, **k: reads.append(a) or open(*a, **k), raising=False)
    assert file_sha256(str(path)) == first and reads == []  # remembered: not read again
    path.write_bytes(b"b" * 1001)
    assert file_sha256(str(path)) != first and len(reads) == 1


def test_model_fingerprint_follows_content(tmp_path, model_dir):
    model, tok = load_model_and_tokenizer(str(model_dir))
    fp = model_fingerprint(model, tok)
    assert fp["model"] == model_fingerprint(str(model_dir))["model"] + ";dtype=float32"
    assert fp == model_fingerprint(model, tok)  # stable
    other = tmp_path / "other"
    tiny.llama(1, seed=1).save_pretrained(other)  # same config, other weights
    tiny.tokenizer().save_pretrained(other)
    assert model_fingerprint(str(other))["model"] != model_fingerprint(str(model_dir))["model"]
    # models built in memory: by their tensors
    a, b = tiny.llama(1, seed=0), tiny.llama(1, seed=0)
    assert model_fingerprint(a)["model"] == model_fingerprint(b)["model"]
    assert model_fingerprint(a)["model"] != model_fingerprint(tiny.llama(1, seed=1))["model"]
    assert model_fingerprint(a.to(dtype=torch.bfloat16))["model"] != model_fingerprint(b)["model"]
    with pytest.raises(InputError, match="does not exist"):
        model_fingerprint("./gone/teacher")


def test_tokenizer_fingerprint_follows_content_not_call_state():
    tok = tiny.tokenizer()
    before = tokenizer_fingerprint(tok)
    tok(["the cat", "a dog sat"], padding=True, truncation=True, max_length=2)  # sets the backend's padding state
    assert tokenizer_fingerprint(tok) == before == tokenizer_fingerprint(tiny.tokenizer())
    changed = tiny.tokenizer()
    changed.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_fingerprint(changed) != before
    added = tiny.tokenizer()
    added.add_tokens(["zebra"])
    assert tokenizer_fingerprint(added) != before
