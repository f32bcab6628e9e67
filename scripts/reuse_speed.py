"""Seconds per optimizer step of on-policy tvd with reused rollouts, ``steps_per_generation`` k = 1, 2, 4, side by side.

    python scripts/reuse_speed.py                    # docs/guides/served.md, "Reusing rollouts"
    python scripts/reuse_speed.py --ks 1,2,4,8 --repeats 3 --max-new-tokens 48

A tiny in-process Llama teacher and student (fdistill.testing), in-process ``generate``, one thread. The runs of
the k values alternate, ``--repeats`` times, so that a machine shared with other work slows them alike; the table
gives the median seconds per step, its ratio to k = 1 and the mean logged ``rollout/ess``. The full benchmark
(vLLM server, overlap, TRL, real models, quality) is ``scripts/bench_rollouts.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import transformers  # noqa: E402

from fdistill import FDistillTrainer  # noqa: E402
from fdistill import testing as tiny  # noqa: E402


def one_run(k: int, folder: str, teacher, data, tok, args) -> tuple[float, float]:
    """(seconds per step, mean rollout/ess) of one tvd run at steps_per_generation=k."""
    config = tiny.config(
        folder,
        objective="tvd",
        max_steps=args.steps,
        steps_per_generation=k,
        max_new_tokens=args.max_new_tokens,
        per_device_train_batch_size=args.batch_size,
        logging_steps=args.steps,
        overwrite_output_dir=True,
        log_level="error",
    )
    student = tiny.llama(args.layers, seed=1, hidden=args.hidden)
    trainer = FDistillTrainer(
        model=student, teacher_model=teacher, args=config, train_dataset=data, processing_class=tok
    )
    start = time.perf_counter()
    trainer.train()
    seconds = (time.perf_counter() - start) / args.steps
    ess = [h["rollout/ess"] for h in trainer.state.log_history if "rollout/ess" in h]
    return seconds, (statistics.mean(ess) if ess else 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,4", help="steps_per_generation values, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    ks = [int(k) for k in args.ks.split(",")]
    tok = tiny.tokenizer()
    teacher = tiny.llama(args.layers + 2, seed=0, hidden=args.hidden, init=0.15)
    data = tiny.dataset(
        args.steps * args.batch_size, seed=0, teacher=teacher, tok=tok, max_new_tokens=args.max_new_tokens
    )
    times: dict[int, list[float]] = {k: [] for k in ks}
    ess: dict[int, list[float]] = {k: [] for k in ks}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for k in ks:
                seconds, mean_ess = one_run(k, os.path.join(tmp, f"k{k}-{repeat}"), teacher, data, tok, args)
                times[k].append(seconds)
                ess[k].append(mean_ess)
    base = statistics.median(times[ks[0]])
    print(
        f"tvd, in-process generate, batch {args.batch_size}, {args.max_new_tokens} new tokens, {args.steps} steps, "
        f"median of {args.repeats} alternating runs, 1 thread"
    )
    print("| steps_per_generation | s/step | vs k=1 | mean rollout/ess |")
    print("|---|---|---|---|")
    for k in ks:
        median = statistics.median(times[k])
        print(f"| {k} | {median:.3f} | {base / median:.2f}× | {statistics.mean(ess[k]):.3f} |")


if __name__ == "__main__":
    main()
