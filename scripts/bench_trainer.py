"""End-to-end training throughput of FDistillTrainer (every f-divergence) vs TRL's DistillationTrainer (issue 9).

CPU (chosen automatically without CUDA: 6-layer teacher, 4-layer student, width 576, vocab 8192, batch 4,
32-token completions, float32; about 2 minutes on 2 cores):

    python scripts/bench_trainer.py --out /tmp/bench_trainer_cpu.md

GPU (SmolLM2-135M-shaped teacher, 4-layer student of the same width, batch 16, 128-token completions, bf16):

    python scripts/bench_trainer.py --out /tmp/bench_trainer_cuda.md

Models are random-weight Llamas built from configs (no downloads) over a word-level tokenizer
whose vocabulary is the model's (token "w<i>" has id i), so every trainer sees the same prompt
ids. Completions are exactly ``--completion`` tokens long (``min_new_tokens`` on every
generation config, so EOS can never end a sample early). Each run: a fresh student from the
same seed, ``torch.manual_seed``, ``--warmup`` untimed optimizer steps then ``--steps`` timed
ones over one epoch of ``batch × (warmup + steps)`` prompts; AdamW (``adamw_torch_fused``, the Trainer's
default: one fused kernel, where the for-loop ``adamw_torch`` spent ≈ 190 ms a step on the demo student’s
parameters on 2 CPU cores against ≈ 20 ms; tables measured before 2026-12-05 used ``adamw_torch``), constant lr, no
gradient checkpointing, models held in ``--dtype`` (no autocast) for both libraries.
Throughput = batch × completion × steps / timed seconds, counting the completion set named in
the "tokens" column (student samples for on-policy objectives). Peak memory: CUDA
max_memory_allocated over the timed steps; on CPU the process's peak RSS over the timed steps
(VmHWM, reset through /proc/self/clear_refs; where that fails, ru_maxrss = the whole process's
lifetime peak). Loss: the last step's logged training loss (fdistill: per-sequence sum averaged
over sequences, the paper's objective; TRL: per-token mean, so ≈ fdistill / completion length).
"""

import argparse
import json
import math
import re
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from fdistill import FDistillConfig, FDistillTrainer
from fdistill.lm.sampling import sample_batches, sampling_config

CUDA = torch.cuda.is_available()
PRESETS = {  # teacher = SmolLM2-135M's shape on GPU; a small one on CPU
    "cuda": dict(
        teacher_layers=30,
        student_layers=4,
        hidden=576,
        vocab=49152,
        batch=16,
        prompt=32,
        completion=128,
        steps=10,
        warmup=3,
        dtype="bfloat16",
    ),
    "cpu": dict(
        teacher_layers=6,
        student_layers=4,
        hidden=576,
        vocab=8192,
        batch=4,
        prompt=16,
        completion=32,
        steps=8,
        warmup=2,
        dtype="float32",
    ),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = ("teacher-layers", "student-layers", "hidden", "vocab", "batch", "prompt", "completion", "steps", "warmup")
    for name in sizes:
        p.add_argument(f"--{name}", type=int, default=None, help="default: the GPU or CPU preset")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument(
        "--fused", choices=["auto", "on", "off"], default="auto", help="fdistill fused_divergence (auto: on CUDA)"
    )
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-trl", action="store_true", help="skip the TRL rows")
    p.add_argument("--out", default=None, help="also write the tables here (Markdown) and JSON beside it")
    o = p.parse_args()
    for k, v in PRESETS["cuda" if CUDA else "cpu"].items():
        if getattr(o, k) is None:
            setattr(o, k, v)
    if o.warmup < 1 or o.steps < 1:
        p.error("use --warmup >= 1 and --steps >= 1")
    o.heads = max(1, o.hidden // 64)
    o.kv_heads = o.heads // 3 if o.heads % 3 == 0 else o.heads
    return o


# ----------------------------------------------------------------------------- models, tokenizer, data


def build_llama(o, layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=o.vocab,
        hidden_size=o.hidden,
        intermediate_size=o.hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=o.heads,
        num_key_value_heads=o.kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).to(device="cuda" if CUDA else "cpu", dtype=getattr(torch, o.dtype))


def build_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, vocab)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_data(o, teacher, tok) -> tuple[Dataset, float]:
    """One epoch of random prompts, plus offline teacher samples (timed once, like `fdistill sample`)."""
    g = torch.Generator().manual_seed(o.seed)
    n = o.batch * (o.warmup + o.steps)
    prompts = [" ".join(f"w{i}" for i in row) for row in torch.randint(4, o.vocab, (n, o.prompt), generator=g).tolist()]
    cfg = sampling_config(teacher, tok, max_new_tokens=o.completion)
    cfg.min_new_tokens = o.completion
    torch.manual_seed(o.seed)
    start = time.perf_counter()
    batches = sample_batches(teacher, tok, prompts, cfg, batch_size=o.batch)
    seconds = time.perf_counter() - start
    samples = [row[m].tolist() for ids, mask, _ in batches for row, m in zip(ids.cpu(), mask.cpu())]
    assert all(len(s) == o.completion for s in samples)
    return Dataset.from_dict({"prompt": prompts, "teacher_sample_ids": samples}), seconds


# ----------------------------------------------------------------------------- measuring


def reset_peak_memory() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
        except OSError:
            pass


def peak_memory_gib() -> float:
    if CUDA:
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux; process lifetime peak


class StepTimer(TrainerCallback):
    """Wall clock at every optimizer step's end; peak memory is reset when the warm-up ends."""

    def __init__(self, warmup: int):
        self.warmup, self.ends = warmup, []

    def on_step_end(self, args, state, control, **kwargs):
        if CUDA:
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        if len(self.ends) == self.warmup:
            reset_peak_memory()

    @property
    def warm(self) -> float:
        """The clock at the last warm-up step's end: the timed steps start here."""
        return self.ends[self.warmup - 1]

    @property
    def seconds(self) -> float:
        """Wall time of the steps after the warm-up."""
        return self.ends[-1] - self.warm


def training_args(o, out_dir: str) -> dict:
    """Trainer settings shared by fdistill and TRL."""
    return dict(
        output_dir=out_dir,
        per_device_train_batch_size=o.batch,
        max_steps=o.warmup + o.steps,
        learning_rate=o.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch_fused",  # the Trainer's default (see the module docstring)
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=o.seed,
        use_cpu=not CUDA,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )


def timed_train(trainer, warmup: int) -> tuple[StepTimer, list[dict]]:
    """Train (no per-step log lines); the step clock and the loss logs."""
    timer = StepTimer(warmup)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(timer)
    trainer.train()
    return timer, [h for h in trainer.state.log_history if "loss" in h]


def measure(trainer, o) -> dict:
    timer, logs = timed_train(trainer, o.warmup)
    seconds = timer.seconds
    # sampled length as each trainer logs it: a check that every completion had exactly o.completion tokens
    length = logs[-1].get("student_sample_length", logs[-1].get("completions/min_length", math.nan))
    return {
        "s_per_step": seconds / o.steps,
        "tok_per_s": o.batch * o.completion * o.steps / seconds,
        "peak_gib": peak_memory_gib(),
        "loss": logs[-1]["loss"],
        "sample_length": length,
    }


# ----------------------------------------------------------------------------- one function per trainer


def fdistill_trainer(
    o, student, teacher, tok, data, objective: str, out_dir: str, exact: bool = True, **settings
) -> FDistillTrainer:
    """An FDistillTrainer with the settings shared with TRL (:func:`training_args`); ``exact``: samples of exactly
    ``o.completion`` tokens (``min_new_tokens``), else they end at EOS."""
    fused = {"auto": None, "on": True, "off": False}[o.fused]
    args = FDistillConfig(
        objective=objective,
        max_new_tokens=o.completion,
        max_target_length=o.completion,
        fused_divergence=fused,
        **{**training_args(o, out_dir), "max_prompt_length": o.prompt, **settings},  # a row's settings win
    )
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    for cfg in (trainer.student_generation_config, trainer.teacher_generation_config):
        if cfg is not None and exact:
            cfg.min_new_tokens = o.completion  # exact-length samples
    return trainer


def run_fdistill(o, teacher, tok, data, objective: str, **settings) -> dict:
    student = build_llama(o, o.student_layers, seed=1)
    torch.manual_seed(o.seed)
    with tempfile.TemporaryDirectory() as tmp:
        return measure(fdistill_trainer(o, student, teacher, tok, data, objective, tmp, **settings), o)


def trl_trainer(o, student, teacher, tok, prompts, beta: float, out_dir: str, exact: bool = True, **settings):
    """TRL's DistillationTrainer with the same shared settings (``exact``: as for :func:`fdistill_trainer`);
    ``prompts``: a "prompt" column."""
    from trl import DistillationConfig, DistillationTrainer

    args = DistillationConfig(
        beta=beta,
        max_completion_length=o.completion,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        generation_kwargs={"min_new_tokens": o.completion} if exact else {},
        **settings,
        **training_args(o, out_dir),
    )
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=prompts, processing_class=tok
    )


def run_trl(o, teacher, tok, data, beta: float) -> dict:
    student = build_llama(o, o.student_layers, seed=1)
    torch.manual_seed(o.seed)
    with tempfile.TemporaryDirectory() as tmp:
        return measure(trl_trainer(o, student, teacher, tok, data.select_columns(["prompt"]), beta, tmp), o)


# ----------------------------------------------------------------------------- report


def fmt(r: dict | None, key: str, spec: str) -> str:
    return "n/a" if r is None or "error" in r else format(r[key], spec)


def tables(o, results: dict, sampling_s: float) -> str:
    mem = "peak GPU GiB" if CUDA else "peak RSS GiB (process)"
    lines = [
        f"| trainer | objective / setting | tokens counted | completion tok/s | s/step | {mem} | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (who, setting, tokens) in ROWS.items():
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {who} | {setting} | {tokens} | n/a ({r['error']}) | | | |")
            continue
        lines.append(
            f"| {who} | {setting} | {tokens} | {r['tok_per_s']:.1f} | {r['s_per_step']:.3f} | "
            f"{r['peak_gib']:.2f} | {r['loss']:.4g} |"
        )
    fused = {"auto": "on" if CUDA else "off", "on": "on", "off": "off"}[o.fused]
    lines += [
        "",
        "Loss: fdistill sums over a completion's positions and averages over sequences (the paper's "
        "objective); TRL averages over tokens, so TRL ≈ fdistill / completion length. fdistill js/tvd score "
        "two completion sets per prompt (teacher + student samples), TRL beta=0.5 only student samples. "
        f"fdistill fused divergence: {fused}; TRL always uses its chunked divergence. "
        "Generation cache: fdistill as the row says (auto = static on CUDA, dynamic on CPU); "
        "TRL its default (dynamic, uncompiled).",
    ]
    steps_per_epoch = o.warmup + o.steps
    n = o.batch * steps_per_epoch
    lines += [
        "",
        f"Offline teacher samples (one-time, not in any row above): {n} prompts × {o.completion} tokens "
        f"in {sampling_s:.2f} s ({n * o.completion / sampling_s:.1f} tok/s).",
        "",
        f"Table 4 (paper): time per epoch of {n} prompts = steady s/step × {steps_per_epoch} steps.",
        "",
        "| objective | offline s/epoch | + one-time sampling | online s/epoch | online / offline | offline loss "
        "| online loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for obj in ("js", "tvd"):
        off, on = results.get(obj), results.get(f"{obj}-online")
        if off is None or on is None or "error" in off or "error" in on:
            continue
        t_off, t_on = off["s_per_step"] * steps_per_epoch, on["s_per_step"] * steps_per_epoch
        lines.append(
            f"| {obj} | {t_off:.2f} | {t_off + sampling_s:.2f} | {t_on:.2f} | {t_on / t_off:.2f} | "
            f"{off['loss']:.4g} | {on['loss']:.4g} |"
        )
    static, dynamic = results.get("rkl-static"), results.get("rkl-dynamic")
    lines += [
        "",
        "Fast sampling: fdistill rkl, student_generation_cache.",
        "",
        "| cache | s/step | completion tok/s |",
        "|---|---|---|",
        f"| static | {fmt(static, 's_per_step', '.3f')} | {fmt(static, 'tok_per_s', '.1f')} |",
        f"| dynamic | {fmt(dynamic, 's_per_step', '.3f')} | {fmt(dynamic, 'tok_per_s', '.1f')} |",
    ]
    if static and dynamic and "error" not in static and "error" not in dynamic:
        lines.append(f"| static / dynamic time | {static['s_per_step'] / dynamic['s_per_step']:.2f} | |")
    return "\n".join(lines)


ROWS = {  # name: (trainer, setting, tokens counted)
    "kl": ("fdistill", "kl (offline teacher samples)", "teacher samples"),
    "rkl": ("fdistill", "rkl (cache auto)", "student samples"),
    "js": ("fdistill", "js (stepwise)", "student samples (+ as many teacher-sample tokens scored)"),
    "tvd": ("fdistill", "tvd", "student samples (+ as many teacher-sample tokens scored)"),
    "trl-1.0": ("TRL DistillationTrainer", "beta=1.0 (reverse KL)", "student samples"),
    "trl-0.5": ("TRL DistillationTrainer", "beta=0.5 (JSD)", "student samples"),
    "js-online": ("fdistill", "js, teacher_sampling=online", "student samples (+ teacher samples drawn each step)"),
    "tvd-online": ("fdistill", "tvd, teacher_sampling=online", "student samples (+ teacher samples drawn each step)"),
    "rkl-static": ("fdistill", "rkl, cache static", "student samples"),
    "rkl-dynamic": ("fdistill", "rkl, cache dynamic", "student samples"),
}


def main():
    o = parse_args()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed-argument notices
    settings = {k: v for k, v in vars(o).items() if k not in ("out",)}
    device = torch.cuda.get_device_name() if CUDA else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"settings: {json.dumps(settings)}\ndevice: {device}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        flush=True,
    )
    tok = build_tokenizer(o.vocab)
    teacher = build_llama(o, o.teacher_layers, seed=0)
    teacher.requires_grad_(False).eval()
    data, sampling_s = build_data(o, teacher, tok)
    print(f"offline teacher samples: {sampling_s:.2f} s", flush=True)

    auto_cache = "static" if CUDA else "dynamic"
    other_cache = "dynamic" if CUDA else "static"
    jobs = {
        "kl": lambda: run_fdistill(o, teacher, tok, data, "kl"),
        "rkl": lambda: run_fdistill(o, teacher, tok, data, "rkl"),
        "js": lambda: run_fdistill(o, teacher, tok, data, "js"),
        "tvd": lambda: run_fdistill(o, teacher, tok, data, "tvd"),
        "trl-1.0": lambda: run_trl(o, teacher, tok, data, beta=1.0),
        "trl-0.5": lambda: run_trl(o, teacher, tok, data, beta=0.5),
        "js-online": lambda: run_fdistill(o, teacher, tok, data, "js", teacher_sampling="online"),
        "tvd-online": lambda: run_fdistill(o, teacher, tok, data, "tvd", teacher_sampling="online"),
        f"rkl-{other_cache}": lambda: run_fdistill(o, teacher, tok, data, "rkl", student_generation_cache=other_cache),
    }
    if o.no_trl:
        jobs = {k: v for k, v in jobs.items() if not k.startswith("trl")}
    results = {}
    for name, job in jobs.items():
        try:
            results[name] = job()
        except Exception as e:  # noqa: BLE001 — TRL (or a setting) failing must not lose the other rows
            if not name.startswith("trl"):
                raise
            results[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:160]}
        print(
            name,
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results[name].items()}),
            flush=True,
        )
    results[f"rkl-{auto_cache}"] = results["rkl"]
    report = tables(o, results, sampling_s)
    print("\n" + report)
    if o.out:
        head = f"Command: `{' '.join(['python', *sys.argv])}`\n\nSettings: `{json.dumps(settings)}`; {device}\n\n"
        Path(o.out).write_text(head + report + "\n")
        Path(o.out).with_suffix(".json").write_text(
            json.dumps(
                {"settings": settings, "device": device, "teacher_sampling_s": sampling_s, "results": results}, indent=1
            )
        )


if __name__ == "__main__":
    main()
