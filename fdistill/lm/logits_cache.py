"""The teacher logits cache: top-k log-probabilities stored compactly beside offline teacher samples, with a stated error.

`fdistill sample --topk-logprobs K` stores, for every position ``t`` of a teacher sample, the teacher's K most likely
token ids ``v_1..v_K`` and their log-probabilities ``l_1..l_K`` (normalised over the whole vocabulary). This module is
the format (version :data:`FORMAT_VERSION`), five Arrow columns per row of ``T`` positions:

- ``teacher_topk_cache_ids``: the ``T·K`` ids, flat, ``uint16`` when every id is below 65536, else ``uint32``;
- ``teacher_topk_cache_top``: ``T`` float32 top-1 values ``m_t = max_j l_{t,j}`` (rounded to float32);
- ``teacher_topk_cache_scale``: ``T`` float32 step sizes ``s_t``;
- ``teacher_topk_cache_codes``: the ``T·K`` gaps below the top-1 as uint16 codes,

      c_{t,j} = round((m_t − l_{t,j}) / s_t) ∈ [0, 65534],   s_t = max_j (m_t − l_{t,j}) / 65534 (over finite l),

  with 65535 standing for ``l = −inf``. Decoding is ``l̂_{t,j} = m_t − c_{t,j} · s_t`` (:func:`decode`), within

      |l̂_{t,j} − l_{t,j}| ≤ s_t / 2 + 2⁻²⁴ · |m_t|        (:func:`error_bound`; the second term is the float32
                                                             rounding of m_t, 0 for float32 input)

  of the value written;
- ``teacher_topk_cache_tail``: ``T`` float32 log tail masses ``log(1 − Σ_j exp(l_{t,j}))``, derived in float64 from
  the values written, before they are rounded (``-inf`` when they sum to 1 or more), so within ``2⁻²⁴·|tail|`` of
  that. Derived from the rounded values instead, a tail of ``1 − sum`` would lose all precision when the top k hold
  nearly all the mass: ``1 − 0.9999`` off by the 1.5e-4 relative error of the values is no tail at all, and the
  reverse KL of such a position infinite.

At K = 64 that is ``64·2 + 64·2 + 4 + 4 + 4 = 268`` bytes per token (uint16 ids) plus Arrow's offsets per row.
Training reads the tail as :attr:`fdistill.divergences.TeacherTopK.tail_logprobs`.

The format's record (:class:`CacheFormat`: version, K, id type, the bound) and the teacher / tokenizer fingerprints are
kept in the dataset's description (the provenance record of :mod:`fdistill.lm.offline_store`) and, for a cache pushed
to the Hub (:func:`push_cache_to_hub`), in ``fdistill_provenance.json`` and the dataset card. Training decodes each
batch as the collator builds it (:meth:`fdistill.lm.data.DistillCollator`), so a memory-mapped cache is never
materialised. The older uncompressed columns (``teacher_topk_ids`` / ``teacher_topk_logprobs``, nested lists) stay
readable.

In-house because no maintained library quantises a top-k distribution per position with a stated bound (DistillKit's
compression, the nearest, is part of its trainer); Arrow (``datasets``) does the storage and memory mapping.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fdistill.errors import InputError

FORMAT_NAME = "fdistill-topk-uint16"
FORMAT_VERSION = 1
IDS, TOP, SCALE, CODES, TAIL = (
    "teacher_topk_cache_ids",
    "teacher_topk_cache_top",
    "teacher_topk_cache_scale",
    "teacher_topk_cache_codes",
    "teacher_topk_cache_tail",
)
CACHE_COLUMNS = (IDS, TOP, SCALE, CODES, TAIL)
# The uncompressed columns written before this format (nested lists of int64 ids and 6-decimal floats): still read.
FLOAT_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs")
NEG_INF_CODE = 65535  # the code of a -inf log-probability
MAX_CODE = NEG_INF_CODE - 1  # the largest gap code
TOP_ROUNDING = 2.0**-24  # float32's unit roundoff: |m - float32(m)| <= TOP_ROUNDING * |m|
DESCRIPTION_PREFIX = "fdistill offline teacher samples; provenance: "
CARD_FILE, PROVENANCE = "README.md", "fdistill_provenance.json"


@dataclass(frozen=True)
class CacheFormat:
    """What a cache holds and how it is encoded: recorded as ``topk_cache`` in the sampling run's provenance.

    Attributes:
        k: ids per position.
        ids_dtype: ``"uint16"`` or ``"uint32"``.
        bytes_per_token: the five columns' Arrow bytes (values and offsets) divided by the positions stored.
    """

    k: int
    ids_dtype: str
    bytes_per_token: float | None = None
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    error_bound: str = "|decoded - logprob| <= scale/2 + 2^-24*|top|, |tail - exact| <= 2^-24*|tail| per position"

    def record(self) -> dict:
        """This format as a JSON-ready dict (the provenance record's ``topk_cache``)."""
        return asdict(self)


def encode(ids: np.ndarray, logprobs: np.ndarray) -> dict[str, np.ndarray]:
    """One row of ``T`` positions: ``ids`` ``(T, K)`` and ``logprobs`` ``(T, K)`` (any float dtype; -inf allowed) as
    the five cache arrays ``{IDS: (T·K,), TOP: (T,), SCALE: (T,), CODES: (T·K,), TAIL: (T,)}`` (ids as int64: the
    column's type narrows them). NaN, +inf or values below float32's range are refused."""
    lp = np.asarray(logprobs, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    if lp.ndim != 2 or ids.shape != lp.shape:
        raise InputError(f"top-k ids {ids.shape} and log-probabilities {lp.shape} must both be (positions, K).")
    if np.isnan(lp).any() or (lp == np.inf).any() or (np.isfinite(lp) & (lp < np.finfo(np.float32).min)).any():
        raise InputError(
            "the teacher's top-k log-probabilities hold NaN, +inf or values below float32's range; they cannot be "
            "cached: check the teacher's dtype (float32) and its logits."
        )
    top = lp.max(-1, initial=-np.inf).astype(np.float32)  # (T,)
    finite = np.isfinite(lp)
    gaps = np.where(finite, np.maximum(top.astype(np.float64)[:, None] - lp, 0.0), 0.0)
    scale = (gaps.max(-1, initial=0.0) / MAX_CODE).astype(np.float32)
    short = scale.astype(np.float64) * MAX_CODE < gaps.max(-1, initial=0.0)  # float32 rounded the step down
    scale[short] = np.nextafter(scale[short], np.float32(np.inf))
    step = scale.astype(np.float64)[:, None]
    codes = np.where(step > 0, np.rint(np.divide(gaps, step, out=np.zeros_like(gaps), where=step > 0)), 0.0)
    codes = np.where(finite, np.minimum(codes, MAX_CODE), NEG_INF_CODE).astype(np.uint16)
    total = np.logaddexp.reduce(lp, axis=-1) if lp.shape[-1] else np.full(len(lp), -np.inf)
    with np.errstate(divide="ignore"):  # a sum of 1 or more: no tail (-inf)
        tail = np.where(total < 0, np.log(-np.expm1(np.minimum(total, 0.0))), -np.inf).astype(np.float32)
    return {IDS: ids.reshape(-1), TOP: top, SCALE: scale, CODES: codes.reshape(-1), TAIL: tail}


def decode(ids, top, scale, codes, tail=None, dtype: torch.dtype = torch.float32):
    """The ``(T, K)`` ids (int64) and log-probabilities (``dtype``) of one row's cache arrays (lists or arrays):
    ``l̂ = top − code · scale``, ``-inf`` for code 65535, computed in float64 then rounded once to ``dtype``; with
    ``tail`` also the ``(T,)`` log tail masses in ``dtype``: ``(ids, logprobs, tail)``."""
    top = np.asarray(top, dtype=np.float64)
    positions = len(top)
    codes = np.asarray(codes, dtype=np.int64).reshape(positions, -1) if positions else np.zeros((0, 0), np.int64)
    ids = np.asarray(ids, dtype=np.int64).reshape(codes.shape)
    lp = top[:, None] - codes * np.asarray(scale, dtype=np.float64)[:, None]
    lp[codes == NEG_INF_CODE] = -np.inf
    if tail is None:
        return torch.from_numpy(ids), torch.from_numpy(lp).to(dtype)
    return torch.from_numpy(ids), torch.from_numpy(lp).to(dtype), torch.tensor(tail, dtype=torch.float32).to(dtype)


def error_bound(top, scale) -> np.ndarray:
    """The per-position bound on ``|decoded − written|`` of :func:`decode` in float64: ``scale/2 + 2⁻²⁴·|top|``."""
    top, scale = np.asarray(top, dtype=np.float64), np.asarray(scale, dtype=np.float64)
    return scale / 2 + TOP_ROUNDING * np.where(np.isfinite(top), np.abs(top), 0.0)


def encode_rows(ids_rows: list, logprob_rows: list) -> dict[str, list[np.ndarray]]:
    """Per-row :func:`encode` of the sampler's nested lists: ``{column: [array per row]}``."""
    out: dict[str, list[np.ndarray]] = {c: [] for c in CACHE_COLUMNS}
    for ids, lp in zip(ids_rows, logprob_rows):
        k = len(ids[0]) if len(ids) else 0
        encoded = encode(np.asarray(ids, dtype=np.int64).reshape(len(ids), k), np.asarray(lp).reshape(len(ids), k))
        for c in CACHE_COLUMNS:
            out[c].append(encoded[c])
    return out


def cache_dataset(ids_rows: list, logprob_rows: list):
    """A `datasets.Dataset` of the five cache columns for these rows, and its :class:`CacheFormat` (K, id type,
    bytes per token of the columns as Arrow stores them)."""
    from datasets import Dataset, Features, List, Value

    columns = encode_rows(ids_rows, logprob_rows)
    biggest = max((int(a.max()) for a in columns[IDS] if a.size), default=0)
    ids_dtype = "uint16" if biggest < 2**16 else "uint32"
    columns[IDS] = [a.astype(ids_dtype) for a in columns[IDS]]
    features = Features(
        {
            IDS: List(Value(ids_dtype)),
            TOP: List(Value("float32")),
            SCALE: List(Value("float32")),
            CODES: List(Value("uint16")),
            TAIL: List(Value("float32")),
        }
    )
    table = Dataset.from_dict(columns, features=features)
    positions = sum(len(t) for t in columns[TOP])
    k = next((len(ids[0]) for ids in ids_rows if len(ids)), 0)
    nbytes = sum(table.data.column(c).nbytes for c in CACHE_COLUMNS)
    return table, CacheFormat(k=k, ids_dtype=ids_dtype, bytes_per_token=round(nbytes / max(positions, 1), 2))


def provenance_of(dataset) -> dict | None:
    """The sampling run's provenance record held in ``dataset``'s description (None when it holds none)."""
    info = getattr(dataset, "info", None)
    text = getattr(info, "description", None) or ""
    if not text.startswith(DESCRIPTION_PREFIX):
        return None
    try:
        return json.loads(text[len(DESCRIPTION_PREFIX) :])
    except json.JSONDecodeError:
        return None


def is_cache(column_names) -> bool:
    """Whether a dataset with these columns holds the cache format (not the older float columns)."""
    return set(CACHE_COLUMNS) <= set(column_names or ())


def check_cache(dataset, tokenizer_print: str, split: str = "train") -> dict | None:
    """The cache's provenance record, after refusing one whose format version is unknown, whose record is missing,
    or whose tokenizer (by content fingerprint) is not ``tokenizer_print``, the student's: one `InputError` naming
    both. Datasets holding the older float columns pass (None)."""
    if not is_cache(getattr(dataset, "column_names", None)):
        return None
    record = provenance_of(dataset)
    if record is None or "topk_cache" not in record:
        raise InputError(
            f"the {split} dataset holds teacher top-k cache columns but not the record of the run that made them "
            "(teacher, tokenizer, format), so they cannot be checked: load it with "
            "fdistill.lm.logits_cache.load_cache(FOLDER_OR_REPO), or load_data on the `fdistill sample` folder."
        )
    version = record["topk_cache"].get("version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"the {split} dataset's top-k cache has format version {version}; this fdistill reads version "
            f"{FORMAT_VERSION}: draw it again with `fdistill sample --topk-logprobs K`."
        )
    if record.get("tokenizer_fingerprint") != tokenizer_print:
        raise InputError(
            f"the {split} dataset's top-k cache was made by teacher {record.get('teacher')!r} with tokenizer "
            f"fingerprint {record.get('tokenizer_fingerprint')}, but the student's tokenizer has fingerprint "
            f"{tokenizer_print}: a cache serves students with its teacher's tokenizer only. Use that tokenizer, or "
            "draw a cache with this one's teacher (`fdistill sample --topk-logprobs K`)."
        )
    return record


def check_caches(train_dataset, eval_dataset, tokenizer) -> dict | None:
    """:func:`check_cache` on the train dataset and every eval one against the student's ``tokenizer``; the train
    cache's record (None when it holds the older float columns)."""
    from fdistill.lm.loading import tokenizer_fingerprint

    tokenizer_print = tokenizer_fingerprint(tokenizer)
    evals = eval_dataset.items() if isinstance(eval_dataset, dict) else [("", eval_dataset)]
    for name, dataset in evals:
        if dataset is not None:
            check_cache(dataset, tokenizer_print, f"eval[{name}]" if name else "eval")
    return check_cache(train_dataset, tokenizer_print) if train_dataset is not None else None


def collate_topk(features: list[dict], columns: tuple, rows_lengths: list[int], length: int, max_length: int):
    """``(B, length, K)`` ids and float32 log-probabilities, and ``(B, length)`` log tail masses (None for the older
    float columns, which hold none), for a batch of examples: decoded per example from the cache columns (``columns
    == CACHE_COLUMNS``) or read from the older float columns; each example's positions are checked against its
    teacher sample's length (``rows_lengths``) and cut at ``max_length``. Padding: ids 0, log-probabilities 0, tail
    ``-inf`` (what the float columns' derived tail is there)."""
    cached = tuple(columns) == CACHE_COLUMNS
    decoded = []
    for f, expected in zip(features, rows_lengths):
        if cached:
            ids, lp, tail = decode(f[IDS], f[TOP], f[SCALE], f[CODES], f[TAIL])
        else:
            ids = torch.tensor(f[columns[0]], dtype=torch.long).reshape(len(f[columns[0]]), -1)
            lp = torch.tensor(f[columns[1]], dtype=torch.float32).reshape(len(f[columns[1]]), -1)
            tail = None
        if len(ids) != len(lp) or min(len(ids), max_length) != expected:
            raise InputError(
                f"an example has {len(ids)} positions of top-k teacher log-probabilities but {expected} teacher "
                "sample tokens; both must come from the same `fdistill sample --topk-logprobs K` run."
            )
        decoded.append((ids[:max_length], lp[:max_length], None if tail is None else tail[:max_length]))
    k = max((ids.shape[-1] for ids, _, _ in decoded if ids.numel()), default=0)
    out_ids = torch.zeros(len(features), length, k, dtype=torch.long)
    out_lp = torch.zeros(len(features), length, k)
    out_tail = torch.full((len(features), length), -torch.inf) if cached else None
    for b, (ids, lp, tail) in enumerate(decoded):
        if ids.numel():
            out_ids[b, : len(ids)], out_lp[b, : len(lp)] = ids, lp
            if cached:
                out_tail[b, : len(tail)] = tail
    return out_ids, out_lp, out_tail


def redacted_command(argv: list[str]) -> str:
    """The ``fdistill`` command line ``argv`` as a shell line without secrets: the API key's value ``***``, URLs
    without credentials or query values (:func:`fdistill.lm.served.http.redact_url`)."""
    import shlex

    from fdistill.lm.served.http import redact_url

    words, secret = [], False
    for word in argv:
        flag, eq, value = word.partition("=")
        if secret:
            word, secret = "***", False
        elif flag == "--teacher-server-api-key":
            word, secret = (f"{flag}=***", False) if eq else (word, True)
        elif "://" in word:
            word = f"{flag}={redact_url(value)}" if eq and flag.startswith("--") else redact_url(word)
        words.append(word)
    return shlex.join(["fdistill", *words])


def dataset_card(record: dict, repo_id: str, command: str | None = None) -> str:
    """The Hub dataset card of a cache: teacher, K, format, bytes per token and the command that made it (``command``,
    already without secrets; default: the command's essential form)."""
    cache = record["topk_cache"]
    settings = record.get("settings", {})
    command = command or "fdistill sample --topk-logprobs {} ...".format(cache["k"])
    lines = [
        "---",
        "tags:",
        "- fdistill",
        "- distillation",
        "- teacher-logits",
        "---",
        f"# {repo_id}",
        "",
        f"Teacher top-k log-probabilities for offline distillation, made by fdistill (format {cache['format']} "
        f"v{cache['version']}).",
        "",
        "| | |",
        "|---|---|",
        f"| teacher | `{record.get('teacher')}` (revision `{record.get('teacher_revision')}`) |",
        f"| teacher fingerprint | `{record.get('teacher_fingerprint')}` |",
        f"| tokenizer fingerprint | `{record.get('tokenizer_fingerprint')}` |",
        f"| K | {cache['k']} |",
        f"| format | {cache['format']} v{cache['version']}: ids {cache['ids_dtype']}, log-probs uint16 gaps below a "
        "float32 top-1 with a float32 step per position, float32 log tail mass per position |",
        f"| error bound | {cache['error_bound']} |",
        f"| bytes per token (top-k columns) | {cache.get('bytes_per_token')} |",
        f"| rows | {record.get('num_rows')} |",
        f"| decoding | {settings.get('decoding')}, temperature {settings.get('temperature')}, "
        f"max_new_tokens {settings.get('max_new_tokens')} |",
        "",
        "Made with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "Train from it with `teacher_topk_columns: true` (no teacher model is loaded); load it with "
        f'`fdistill.lm.logits_cache.load_cache("{repo_id}")`, which keeps the record above for the checks.',
        "",
    ]
    return "\n".join(lines)


def push_cache_to_hub(
    dataset, repo_id: str, *, private: bool = False, command: str | None = None, token=None, api=None
) -> str:
    """Upload a cache (the `fdistill sample` output, loaded) as a Hub dataset: its rows as the Arrow files it is kept
    in (Parquet has no 16-bit integers: the same columns take 30% more there, zstd included), the provenance
    record (``fdistill_provenance.json``) and a dataset card (:func:`dataset_card`, naming ``command``: the line that
    made it, from :func:`redacted_command`), in one commit through `huggingface_hub.HfApi` (``api``: a stand-in with
    ``create_repo`` / ``upload_folder``). Returns the commit URL."""
    from huggingface_hub import HfApi

    record = provenance_of(dataset)
    if record is None or "topk_cache" not in record:
        raise InputError(
            "the dataset holds no teacher top-k cache record; push the folder `fdistill sample --topk-logprobs K` "
            "wrote (loaded with load_data or load_cache)."
        )
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="fdistill-cache-") as folder:
        staging, data = os.path.join(folder, "staging"), os.path.join(folder, "upload", "data")
        dataset.save_to_disk(staging)
        shards = sorted(f for f in os.listdir(staging) if f.endswith(".arrow"))
        os.makedirs(data)
        for i, name in enumerate(shards):
            os.replace(os.path.join(staging, name), os.path.join(data, f"train-{i:05d}-of-{len(shards):05d}.arrow"))
        folder = os.path.join(folder, "upload")
        with open(os.path.join(folder, PROVENANCE), "w") as f:
            json.dump(record, f, indent=1, default=str)
        with open(os.path.join(folder, CARD_FILE), "w") as f:
            f.write(dataset_card(record, repo_id, command))
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="dataset",
            commit_message=f"fdistill teacher top-k cache (K={record['topk_cache']['k']})",
        )
    return getattr(commit, "commit_url", str(commit))


def load_cache(source: str, *, revision: str | None = None):
    """A cache as a memory-mapped dataset with its provenance record in ``info.description`` (what training checks):
    a folder `fdistill sample` wrote, a folder holding a pushed cache (``data/*.arrow`` and ``fdistill_provenance.json``),
    or a Hub dataset repo id (downloaded once, at ``revision``)."""
    from datasets import load_dataset, load_from_disk

    if os.path.isdir(source) and os.path.exists(os.path.join(source, "state.json")):
        return load_from_disk(source)
    if os.path.isdir(source):
        folder = source
    else:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source, repo_type="dataset", revision=revision)
    if not os.path.exists(os.path.join(folder, PROVENANCE)):
        raise InputError(f"{source!r} holds no {PROVENANCE}: it is not a cache pushed by fdistill.")
    data = load_dataset("arrow", data_files={"train": os.path.join(folder, "data", "*.arrow")}, split="train")
    return with_record(data, source, folder)


def with_record(data, source: str, folder: str | None = None):
    """``data``, a pushed cache loaded from ``folder`` or the Hub dataset ``source`` (folder None), with its provenance
    record (``fdistill_provenance.json``) put back in its description, where training reads it; other data, or a
    cache whose record is already there or cannot be fetched, as it is (training then says what is missing)."""
    if not is_cache(data.column_names) or provenance_of(data) is not None:
        return data
    if folder is None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            path = hf_hub_download(source, PROVENANCE, repo_type="dataset")
        except (HfHubHTTPError, OSError, ValueError):
            return data
    else:
        path = os.path.join(folder, PROVENANCE)
        if not os.path.exists(path):
            return data
    with open(path) as f:
        data.info.description = DESCRIPTION_PREFIX + json.dumps(json.load(f), default=str)
    return data


__all__ = [
    "CACHE_COLUMNS",
    "FLOAT_COLUMNS",
    "FORMAT_VERSION",
    "CacheFormat",
    "cache_dataset",
    "check_cache",
    "decode",
    "encode",
    "error_bound",
    "load_cache",
    "provenance_of",
    "push_cache_to_hub",
]
