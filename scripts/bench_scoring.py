"""Scoring one on-policy micro-batch with each prompt read once against the prompt repeated per completion set.

fdistill scores every completion set an objective needs (tvd and js: the teacher's samples and the student's) by
both models. The shared path (:func:`fdistill.lm.data.score_shared_prompts`) runs each model over the ``B`` prompts
once and continues their key/value cache with all ``n·B`` completions; the repeated path (what fdistill did before,
and still does for a model that cannot share the prompt) runs one forward over
``[prompt | completion]`` for every set. Both give the same loss to float rounding; this measures the time.

The demo's models: the packaged SmolLM2-135M-Instruct teacher (GGUF) and the 4-layer student made from it by layer
copying (:mod:`fdistill.studies.demo`). One micro-batch of ``--batch`` random prompts of ``--prompt`` tokens at most
(lengths drawn from the upper fifth, left-padded) and ``--sets`` completion sets of ``--completion`` tokens at most
(right-padded); timed: the student's forward + backward and the teacher's forward (no gradient) through
``fdistill.lm.scoring.score_sets``, and the objective's loss (``--objective``). The two paths alternate within each
repeat (their order flips every repeat) so that load from other processes hits both alike; the table reports
medians and the median of the per-repeat ratios.

    python scripts/bench_scoring.py --out docs/trainer/bench_scoring_cpu.md

On a GPU the models are bfloat16 on it (the same command); ``--random-weights`` builds a random teacher of the
packaged one's shape where the package is not installed. ``--fused`` times the same with the fused divergence
(the LM heads record their inputs; the CUDA default), where the shared path joins the LM-head inputs instead of the
logits.

``--compare split-head`` times instead each set's logits from the model's checked LM head
(:func:`fdistill.lm.scoring.split_head`, the default since 2026-12-04) against the logits joined from the two
forwards and sliced per set (before; what models whose head does not check still get):

    python scripts/bench_scoring.py --compare split-head --prompt 64 --completion 32

``--compare closed-form`` times the step terms' closed-form logit gradient (``fdistill.divergences._StepTerms``,
since 2026-12-04) against autograd through them (before).

``--rollouts ROW ...`` times whole on-policy steps instead: ``scripts/bench_rollouts.py``'s rows (its shared stages,
cached in ``--work``; its CPU or GPU preset) for ``--objective``, each row trained once per path per repeat, the paths
alternating:

    python scripts/bench_scoring.py --rollouts in-process k=4 --work runs/bench_rollouts
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_rollouts (--rollouts)

from fdistill.lm import scoring  # noqa: E402
from fdistill.lm.config import FDistillConfig  # noqa: E402
from fdistill.lm.objectives import get_objective  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=200, help="longest prompt (tokens)")
    p.add_argument("--completion", type=int, default=64, help="longest completion (tokens)")
    p.add_argument("--sets", type=int, default=2, help="completion sets scored (tvd, js: 2)")
    p.add_argument("--objective", default="tvd")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats of each path (after one untimed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice, the cores)")
    p.add_argument(
        "--random-weights", action="store_true", help="a random SmolLM2-135M-shaped teacher instead of the packaged one"
    )
    p.add_argument("--fused", action="store_true", help="the fused divergence's path (LM-head inputs, no logits)")
    p.add_argument("--compare", choices=sorted(COMPARISONS), default="shared-prompt", help="which two paths to time")
    p.add_argument("--rollouts", nargs="+", help="bench_rollouts.py rows to time as whole steps (e.g. in-process k=4)")
    p.add_argument(
        "--work", default="runs/bench_rollouts", help="--rollouts: bench_rollouts.py's cache of shared stages"
    )
    p.add_argument("--out", help="write the table here (Markdown)")
    return p.parse_args(argv)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def models(random_weights: bool = False):
    """The demo's teacher and 4-layer copied-layer student: float32 on the CPU; bfloat16 on a GPU when there is one
    (as bench_rollouts.py's CUDA preset). ``random_weights``: a random-weight Llama of SmolLM2-135M's shape instead
    of the packaged GGUF (for a machine without the package, e.g. a lent GPU: same shapes, so the same time)."""
    from fdistill.lm.student import create_student_from_teacher
    from fdistill.studies.demo import STUDENT_LAYERS

    teacher, tok = random_smollm2() if random_weights else packaged_smollm2()
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    teacher.to(DEVICE, dtype).eval()
    student = create_student_from_teacher(teacher, layers=STUDENT_LAYERS).to(DEVICE, dtype).train()
    return teacher, student, tok


def packaged_smollm2():
    from fdistill.lm.model_loading import load_model_and_tokenizer
    from fdistill.studies.demo import SMOLLM2, SMOLLM2_GGUF

    return load_model_and_tokenizer(SMOLLM2, gguf_file=SMOLLM2_GGUF)


def random_smollm2():
    """A random-weight Llama of SmolLM2-135M-Instruct's shape (bench_trainer.py's GPU teacher), and a stand-in for
    its tokenizer (the benchmark reads only the vocabulary size and the pad id)."""
    from types import SimpleNamespace

    from bench_trainer import build_llama

    shape = SimpleNamespace(vocab=49152, hidden=576, heads=9, kv_heads=3, dtype="float32")
    teacher = build_llama(shape, layers=30, seed=0)
    return teacher, SimpleNamespace(vocab_size=shape.vocab, pad_token_id=teacher.config.pad_token_id)


def micro_batch(o, vocab: int, pad: int) -> dict[str, torch.Tensor]:
    """Random prompts (left-padded) and ``o.sets`` completion sets (right-padded), named as the objective's sets."""
    g = torch.Generator().manual_seed(o.seed)

    def lengths(longest):
        return torch.randint(max(1, longest * 4 // 5), longest + 1, (o.batch,), generator=g).tolist()

    def padded(longest, left):
        ids = torch.full((o.batch, longest), pad)
        mask = torch.zeros((o.batch, longest), dtype=torch.bool)
        for i, n in enumerate(lengths(longest)):
            cols = slice(longest - n, longest) if left else slice(0, n)
            ids[i, cols] = torch.randint(0, vocab, (n,), generator=g)
            mask[i, cols] = True
        return ids, mask

    out = dict(zip(("prompt_ids", "prompt_mask"), padded(o.prompt, left=True)))
    for name in ("teacher", "student", "reference")[: o.sets]:
        out[f"{name}_ids"], out[f"{name}_mask"] = padded(o.completion, left=False)
    return {k: v.to(DEVICE) for k, v in out.items()}


@contextmanager
def repeated_prompts():
    """The repeated-prompt path: the shared one declines every model (as it does for the ones it cannot serve)."""
    with mock.patch.object(scoring, "score_shared_prompts", lambda *args, **kwargs: None):
        yield


@contextmanager
def joined_logits():
    """The joined-logits path: no LM head is split per set (as for a model whose head does not check)."""
    from fdistill.lm import trainer

    with (
        mock.patch.object(scoring, "split_head", lambda *a, **k: None),
        mock.patch.object(trainer, "split_head", lambda *a, **k: None),
    ):
        yield


@contextmanager
def autograd_terms():
    """The step terms differentiated by autograd (before): no closed-form logit gradient (``_StepTerms``)."""
    from fdistill import divergences as d

    with mock.patch.object(d._StepTerms, "apply", d._autograd_terms):
        yield


COMPARISONS = {  # --compare: (path before, path now), each a name and the context it runs in
    "shared-prompt": (("repeated prompt (before)", repeated_prompts), ("shared prompt (now)", contextlib.nullcontext)),
    "split-head": (("joined logits (before)", joined_logits), ("per-set logits (now)", contextlib.nullcontext)),
    "closed-form": (
        ("autograd terms (before)", autograd_terms),
        ("closed-form gradient (now)", contextlib.nullcontext),
    ),
}


def step(student, teacher, inputs, names, objective, args, pad: int, fused: bool = False, heads=(None, None)) -> float:
    """Student forward + backward and teacher forward on the sets ``names``, the objective's loss; returns it.
    ``fused``: the LM heads record their inputs and the fused divergence takes the loss (the CUDA default).
    ``heads``: the student's and the teacher's split LM heads (:func:`fdistill.lm.scoring.split_head`) or None."""
    how = dict(pad_token_id=pad, is_encoder_decoder=False, shared_vocab_size=None, fused=fused)
    s, s_out = scoring.score_sets(student, inputs, names, **how, head=heads[0])
    with torch.no_grad():
        t, t_out = scoring.score_sets(teacher, inputs, names, **how, head=heads[1])
    counts = {n: inputs[f"{n}_mask"].sum().float() for n in names}
    batch = scoring.scored_batch(
        s,
        t,
        counts,
        reduction=args.loss_reduction,
        heads=scoring.fused_heads(student, teacher, None) if fused else None,
        outputs=(s_out, t_out),
        student_config=student.config,
        is_encoder_decoder=False,
    )
    loss = objective.loss(batch, args).loss
    loss.backward()
    student.zero_grad(set_to_none=True)
    return loss.item()  # waits for the device: the step's time is all in


def alternating(repeats: int, paths):
    """``(repeat, path name, its context)`` with the two ``paths``' order flipped every repeat."""
    for r in range(repeats):
        for name, context in paths if r % 2 == 0 else list(reversed(paths)):
            yield r, name, context


def rollout_steps(o) -> str:
    """s/step of bench_rollouts.py's rows under each path (its timing: warm-up steps untimed), alternating."""
    import bench_rollouts as bench

    argv = ["--objective", o.objective, "--rows", *o.rollouts, "--no-trl", "--work", o.work]
    b = bench.parse_args(argv)
    bench.transformers.logging.set_verbosity_error()
    shared = bench.load_shared(b)
    paths = COMPARISONS[o.compare]
    times = {(row, name): [] for row in o.rollouts for name, _ in paths}
    for _, name, context in alternating(o.repeats, paths):
        for row in o.rollouts:
            with context():
                result = bench.run_fdistill_row(b, shared, o.objective, row)
            if "s_per_step" not in result:
                raise RuntimeError(f"row {row}: {result}")
            times[row, name].append(result["s_per_step"])
            print(row, name, f"{result['s_per_step']:.3f} s/step", flush=True)
    lines = [
        f"Command: `python scripts/bench_scoring.py {' '.join(sys.argv[1:])}`",
        "",
        f"bench_rollouts.py rows for {o.objective}: batch {b.batch}, completions ≤ {b.completion} tokens, prompts ≤ "
        f"{b.prompt} tokens, {b.warmup} warm-up + {b.steps} timed steps per row and path, {o.repeats} repeats "
        f"(paths alternating), torch threads {torch.get_num_threads()}.",
        "",
        f"| row | {paths[0][0]} s/step | {paths[1][0]} s/step | before/now |",
        "| --- | --- | --- | --- |",
    ]
    for row in o.rollouts:
        old, new = (statistics.median(times[row, name]) for name, _ in paths)
        lines.append(f"| {row} | {old:.3f} | {new:.3f} | {old / new:.2f}× |")
    return "\n".join(lines)


def main(argv=None) -> None:
    o = parse(argv)
    if o.threads:
        torch.set_num_threads(o.threads)
    text = rollout_steps(o) if o.rollouts else micro_batch_steps(o)
    print(text)
    if o.out:
        tmp = Path(o.out).with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(o.out)


def micro_batch_steps(o) -> str:
    """Time one micro-batch's scoring under each path, alternating."""
    teacher, student, tok = models(o.random_weights)
    args = FDistillConfig(output_dir="/tmp/bench_scoring", objective=o.objective, report_to=[])
    objective = get_objective(o.objective)
    names = [n for n in ("reference", "teacher", "student") if n in objective.scores][: o.sets]
    inputs = micro_batch(o, tok.vocab_size if hasattr(tok, "vocab_size") else len(tok), tok.pad_token_id)
    inputs = {k: v for k, v in inputs.items() if k.split("_")[0] in names or k.startswith("prompt")}
    paths = COMPARISONS[o.compare]
    times = {name: [] for name, _ in paths}
    losses, heads = {}, {}
    pad = tok.pad_token_id
    for r, name, context in alternating(o.repeats + 1, paths):
        with context():
            if name not in heads:  # checked once, as the trainer does (untimed)
                heads[name] = [
                    None if o.fused else scoring.split_head(m, inputs, names[0], pad, False) for m in (student, teacher)
                ]
            start = time.perf_counter()
            losses[name] = step(student, teacher, inputs, names, objective, args, pad, o.fused, heads[name])
            if r:  # the first repeat warms up
                times[name].append(time.perf_counter() - start)
    old, new = (times[name] for name, _ in paths)
    ratios = [a / b for a, b in zip(old, new)]
    lo, hi = (losses[name] for name, _ in paths)
    rows = [
        "| path | median s | min s |",
        "| --- | --- | --- |",
        *(f"| {name} | {statistics.median(t):.3f} | {min(t):.3f} |" for name, t in times.items()),
    ]
    return "\n".join(
        [
            f"Command: `python scripts/bench_scoring.py {' '.join(sys.argv[1:])}`",
            "",
            f"Objective {o.objective}, sets {names}, batch {o.batch}, prompts ≤ {o.prompt} tokens, completions ≤ "
            f"{o.completion} tokens, {'random-weight teacher, ' if o.random_weights else ''}"
            f"{'fused divergence, ' if o.fused else ''}{o.repeats} timed repeats "
            f"(interleaved), device {DEVICE.type}, torch threads "
            f"{torch.get_num_threads()}, CPUs {os.cpu_count()}.",
            "",
            *rows,
            "",
            f"Speed-up before/now: median of per-repeat ratios {statistics.median(ratios):.2f}× "
            f"(range {min(ratios):.2f}–{max(ratios):.2f}); ratio of medians "
            f"{statistics.median(old) / statistics.median(new):.2f}×.",
            "Per repeat (before / now, s): " + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(old, new)) + ".",
            f"Loss before {lo:.8g}, now {hi:.8g} (relative difference {abs(lo - hi) / abs(lo):.1e}).",
        ]
    )


if __name__ == "__main__":
    main()
