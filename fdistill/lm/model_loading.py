"""Loading a model and its tokenizer from a Hub name, a local folder or a GGUF file (converted once and cached).

Everything goes through transformers; this module decides which of its loaders fits a given string, refuses one
that cannot work before anything is loaded, and caches GGUF-converted models (transformers dequantises GGUF at
every load, and refuses ``save_pretrained`` on such a model). Data and content fingerprints:
:mod:`fdistill.lm.loading`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from fdistill.errors import InputError, invalid
from fdistill.lm.loading import _cache_root, _missing, _reason, is_hub_name, resolve_package_path

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` → ``torch.bfloat16`` (None and dtypes pass through); an unknown name is an `InputError`."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise invalid("dtype", dtype, f"use one of {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
):
    """Load a causal LM or encoder–decoder and its tokenizer; GGUF files are converted once and cached.

    A local path that does not exist (or is not a model folder), and a Hub name that cannot be loaded, are
    one `InputError` naming the path and the fix, raised before anything is loaded. The model's
    ``fdistill_source`` records where its weights came from, for `model_fingerprint`.

    Arguments:
        name_or_path: Hub name or local folder (for GGUF: the folder holding the file).
        gguf_file: file name of a GGUF checkpoint inside ``name_or_path``.
        dtype: ``"float32"``, ``"bfloat16"``, ... (default: as stored; GGUF dequantises to float32).
        cache_dir: where a converted GGUF model is cached (default ``~/.cache/fdistill/gguf``).
    """
    torch_dtype = resolve_dtype(dtype)
    name_or_path = resolve_package_path(name_or_path)
    _check_model_source(name_or_path, gguf_file)
    if gguf_file is not None:
        model, tokenizer = _load_gguf(name_or_path, gguf_file, torch_dtype, cache_dir)
        model.fdistill_source = os.path.abspath(os.path.join(name_or_path, gguf_file))
        return model, tokenizer
    tokenizer = _loading(
        "tokenizer", name_or_path, lambda: AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    )
    config = _loading("config", name_or_path, lambda: AutoConfig.from_pretrained(name_or_path, revision=revision))
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = _loading(
        "model", name_or_path, lambda: auto.from_pretrained(name_or_path, revision=revision, dtype=torch_dtype)
    )
    if os.path.isdir(name_or_path):
        model.fdistill_source = os.path.abspath(name_or_path)
    else:
        commit = getattr(model.config, "_commit_hash", None) or revision or "unknown"
        model.fdistill_source = f"hub:{name_or_path}@{commit}"
    return model, tokenizer


_MODEL_FIX = "give a folder saved with save_pretrained (config.json, weights and tokenizer files), or a Hub name."


def _check_model_source(name_or_path: str, gguf_file: str | None) -> None:
    """Refuse a model path that cannot work before anything is loaded (never ask the Hub for a local path)."""
    path = Path(name_or_path).expanduser()
    if gguf_file is not None:
        if not path.is_dir():
            raise _missing(
                "GGUF folder", name_or_path, "pass the folder that holds the GGUF file, and the file name as gguf_file."
            )
        if not (path / gguf_file).is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            fix = (
                f"{name_or_path!r} holds the GGUF files {found}; pass one of them."
                if found
                else (
                    f"{name_or_path!r} holds no .gguf file; pass the folder that holds it (or drop gguf_file for a "
                    "save_pretrained folder)."
                )
            )
            raise invalid("gguf_file", gguf_file, fix, "is not in the folder")
        return
    if not path.exists():
        if not is_hub_name(name_or_path):
            raise _missing("model folder", name_or_path, _MODEL_FIX)
        return
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            raise InputError(
                f"model {name_or_path!r} is a GGUF file: pass its folder ({str(path.parent)!r}) as the "
                f"model and {path.name!r} as gguf_file (--gguf-file)."
            )
        raise InputError(f"model {name_or_path!r} is a file, not a model folder: {_MODEL_FIX}")
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"it holds GGUF files {ggufs}: pass one as gguf_file (--gguf-file)." if ggufs else _MODEL_FIX
        raise InputError(f"model folder {name_or_path!r} has no config.json: {hint}")


def _loading(part: str, name_or_path: str, load):
    """``load()``, with a loader's failure turned into one `InputError` naming the model, the part and the fix."""
    try:
        return load()
    except (OSError, ValueError, KeyError) as error:
        where = "folder" if os.path.isdir(name_or_path) else "Hub model"
        fix = (
            f"save the {part} into the folder too (e.g. {part}.save_pretrained(folder))"
            if where == "folder"
            else "check the name and revision, and the network (with HF_HUB_OFFLINE=1 only cached models load)"
        )
        raise InputError(f"could not load the {part} of {where} {name_or_path!r}: {_reason(error)}; {fix}.") from error


def gguf_cache_folder(folder: str, gguf_file: str, cache_dir: str | None = None) -> Path:
    """The normal model folder a GGUF checkpoint is converted to and cached in by :func:`load_model_and_tokenizer`
    (keyed by the file's path, size and mtime); it exists once the model was loaded. vLLM serves such a folder."""
    gguf_path = os.path.join(resolve_package_path(folder), gguf_file)
    stat = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return _cache_root(cache_dir) / "gguf" / f"{Path(gguf_file).stem}-{key}"


def _load_gguf(folder: str, gguf_file: str, dtype, cache_dir: str | None):
    cached = gguf_cache_folder(folder, gguf_file, cache_dir)
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
