"""Benchmark of the cross-tokenizer f-DISTILL loss against the same-tokenizer one: forward+backward time, side by side.

CPU, the SmolLM2 (49152) / Gemma 3 (262144) vocabulary sizes, one thread (about a minute):

    python scripts/bench_cross_divergences.py --tokens 64 --repeats 3

Each row is one ``loss.backward()`` of the JS objective on teacher and student samples (both sides, so both halves
of every term) on random float32 inputs: ``cross`` is :func:`fdistill.lm.cross_divergences.cross_f_divergence_loss`
with a teacher of ``--teacher-vocab`` ids, a vocabulary map of ``--shared`` random pairs and an alignment where every
third chunk is two student tokens against one teacher token (the rest one-to-one); ``same (Vs)`` and ``same (Vt)`` are
:func:`fdistill.divergences.f_divergence_loss` with both models on the student's or on the teacher's vocabulary.
``--confident`` is the share of tokens whose logits put ≥ ½ on the sampled token (they take the exact complement's
pass over the vocabulary). Time: the minimum over ``--repeats`` after one warm-up run.
"""

import argparse
import time
from types import SimpleNamespace

import torch

from fdistill.divergences import SampledSequences, f_divergence_loss
from fdistill.lm.cross_divergences import CrossSampledSequences, cross_f_divergence_loss


def alignment(batch: int, tokens: int) -> SimpleNamespace:
    """Every third chunk two student tokens against one teacher token, the others one each side."""
    s_chunks = torch.zeros(batch, tokens, dtype=torch.long)
    t_chunks = torch.full((batch, tokens), -1, dtype=torch.long)
    counts = []
    for b in range(batch):
        chunk, i = 0, 0
        while i < tokens:
            width = 2 if chunk % 3 == 2 and i + 1 < tokens else 1
            s_chunks[b, i : i + width] = chunk
            t_chunks[b, chunk] = chunk
            i, chunk = i + width, chunk + 1
        counts.append(chunk)
    return SimpleNamespace(student_chunks=s_chunks, teacher_chunks=t_chunks, num_chunks=torch.tensor(counts))


def best_time(step, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="student tokens per row")
    parser.add_argument("--student-vocab", type=int, default=49152)
    parser.add_argument("--teacher-vocab", type=int, default=262144)
    parser.add_argument("--shared", type=int, default=30000, help="pairs in the vocabulary map")
    parser.add_argument("--confident", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    B, C, Vs, Vt = args.batch, args.tokens, args.student_vocab, args.teacher_vocab
    labels = torch.randint(0, min(Vs, Vt), (B, C), generator=g)
    peaked = (torch.rand(B, C, 1, generator=g) < args.confident).float() * 30.0  # ≥ ½ on the label

    def logits(vocab: int) -> torch.Tensor:
        return torch.randn(B, C, vocab, generator=g).scatter_add(-1, labels[..., None], peaked)

    student = logits(Vs).requires_grad_()
    teacher, same_s, same_t = logits(Vt), logits(Vs), logits(Vt)
    student_t = logits(Vt).requires_grad_()
    align = alignment(B, C)
    vocab = SimpleNamespace(
        student_ids=torch.randperm(Vs, generator=g)[: args.shared],
        teacher_ids=torch.randperm(Vt, generator=g)[: args.shared],
    )

    def cross() -> None:
        batch = CrossSampledSequences(student, teacher, labels, labels, align)
        cross_f_divergence_loss("js", vocab_map=vocab, teacher_samples=batch, student_samples=batch).loss.backward()

    def same(s: torch.Tensor, t: torch.Tensor):
        def step() -> None:
            batch = SampledSequences(s, t, labels)
            f_divergence_loss("js", teacher_samples=batch, student_samples=batch).loss.backward()

        return step

    rows = {"cross": cross, "same (Vs)": same(student, same_s), "same (Vt)": same(student_t, same_t)}
    times = {name: best_time(step, args.repeats) for name, step in rows.items()}
    print(f"js fwd+bwd, B={B} tokens={C} Vs={Vs} Vt={Vt} shared={args.shared} confident={args.confident}")
    for name, seconds in times.items():
        print(f"  {name:10s} {seconds * 1000:8.0f} ms   {seconds / times['same (Vs)']:.2f}x same (Vs)")


if __name__ == "__main__":
    main()
