"""Benchmark: a partly scored completion set read as views of its logits, or as gathered rows of its scored positions.

``fdistill.divergences._side_terms`` reads a set scored at ``_DENSE_SHARE`` of its positions or more as
``(B·T, V)`` views (the unscored rows' terms and gradient set to 0), and a sparser one as gathered rows. This script
times both ways side by side at several shares, which is what the threshold rests on:

    python scripts/bench_scored_share.py --shares 0.5 0.6 0.7 0.8 0.9 0.97 --kinds tvd js kl

Each timing is one forward + backward of ``f_divergence_loss`` over a teacher-sample and a student-sample set of
``(B, T, V)`` random logits, the student's with gradient, the unscored positions at the end of each row (as samples
that stopped at EOS): the fastest of ``--repeats`` after one warm-up, in milliseconds; the two ways alternate.
"""

import argparse
import time

import torch

import fdistill.divergences as divergences
from fdistill.divergences import SampledSequences, f_divergence_loss


def timed(kind: str, share: float, dense: bool, shape: tuple[int, int, int], repeats: int) -> float:
    """Milliseconds of one loss + backward with ``share`` of the positions scored, read as views or gathered."""
    b, t, v = shape
    generator = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(2):
        labels = torch.randint(0, v, (b, t), generator=generator)
        lengths = torch.full((b,), max(1, round(share * t)))
        lengths[0] = t  # one sample runs to the end
        labels[torch.arange(t) >= lengths[:, None]] = -100
        student = torch.randn(b, t, v, generator=generator).requires_grad_()
        sets.append(SampledSequences(student, torch.randn(b, t, v, generator=generator), labels))
    saved = divergences._DENSE_SHARE
    divergences._DENSE_SHARE = 0.0 if dense else 1.01
    try:
        times = []
        for _ in range(repeats + 1):
            for s in sets:
                s.student_logits.grad = None
            start = time.perf_counter()
            f_divergence_loss(kind, teacher_samples=sets[0], student_samples=sets[1]).loss.backward()
            times.append(time.perf_counter() - start)
    finally:
        divergences._DENSE_SHARE = saved
    return 1000 * min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.97])
    parser.add_argument("--kinds", nargs="+", default=["tvd", "js", "kl"], choices=divergences.DIVERGENCES)
    parser.add_argument("--shape", type=int, nargs=3, default=[8, 32, 49152], metavar=("B", "T", "V"))
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    if not all(0 < share <= 1 for share in args.shares) or args.repeats < 1 or min(args.shape) < 1:
        parser.error("use --shares in (0, 1], --repeats >= 1 and a --shape of positive sizes")
    print(f"threads {torch.get_num_threads()}, shape {tuple(args.shape)}, threshold {divergences._DENSE_SHARE}")
    print("| kind | scored share | gathered ms | views ms | views faster by |")
    print("|---|---|---|---|---|")
    for kind in args.kinds:
        for share in args.shares:
            gathered = timed(kind, share, False, tuple(args.shape), args.repeats)
            views = timed(kind, share, True, tuple(args.shape), args.repeats)
            print(f"| {kind} | {share:.2f} | {gathered:.0f} | {views:.0f} | {gathered / views:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
