"""Profile of on-policy steps with ``num_iterations = μ``: where a step that draws and a step that reuses its
samples spend their time, on the stages ``scripts/bench_rollouts.py`` cached in ``--work``.

    python scripts/profile_rollout_steps.py --work runs/bench_rollouts --objective tvd --mu 4 --steps 14

Prints, for the draw steps and the reused steps after the first group, the mean wall time per step of each region
(the step, the student's generation, the scoring forwards, the teacher's, the objective, the backward pass, the
importance weights) in ms. ``--torch-profile N`` also prints ``torch.profiler``'s operator table for global step
N, grouped by input shape (where the matmuls' share comes from). Two versions of fdistill compare by running this
script alternately under each, e.g. ``PYTHONPATH=/tmp/old python scripts/...`` with ``git worktree add /tmp/old
<commit>``: this machine's timings move between runs, so alternate and repeat.
"""

import argparse
import collections
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rollouts  # noqa: E402
from bench_trainer import fdistill_trainer  # noqa: E402

import fdistill.lm.trainer as trainer_module  # noqa: E402

REGIONS = {  # label: (owner, attribute) timed around each call
    "generation": (trainer_module.FDistillMixin, "generate_student_samples"),
    "scoring forwards": (trainer_module, "score_sets"),
    "teacher's forward": (trainer_module.FDistillMixin, "_score_teacher"),
    "importance weights": (trainer_module.FDistillMixin, "_importance_weights"),
}


class Regions(TrainerCallback):
    """Wall time per region and per step, kept apart for draw steps and reused steps (the first group left out)."""

    def __init__(self, mu: int):
        self.mu, self.kind, self.totals = mu, None, collections.defaultdict(float)

    def timed(self, label: str, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if self.kind:
                    self.totals[self.kind, label] += time.perf_counter() - start

        return wrapper

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step  # steps done; this one is step + 1
        self.kind = None if step < max(self.mu, 2) else ("draw" if step % self.mu == 0 else "reused")
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.kind:
            self.totals[self.kind, "step"] += time.perf_counter() - self.start
            self.totals[self.kind, "steps"] += 1
        self.kind = None

    def table(self) -> str:
        lines = []
        for kind in ("draw", "reused"):
            n = self.totals.get((kind, "steps"), 0)
            if n:
                parts = {label: 1000 * v / n for (k, label), v in self.totals.items() if k == kind and label != "steps"}
                lines.append(f"{kind} steps ({int(n)}): " + ", ".join(f"{k} {v:.0f} ms" for k, v in parts.items()))
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/bench_rollouts", help="bench_rollouts.py's cache of the shared stages")
    parser.add_argument("--objective", default="tvd", choices=("rkl", "js", "tvd"))
    parser.add_argument("--mu", type=int, default=4, help="num_iterations (>= 2: reused steps to profile)")
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps (more than 2 groups of --mu)")
    parser.add_argument("--torch-profile", type=int, default=0, metavar="N", help="also profile global step N")
    o = parser.parse_args()
    if o.mu < 2 or o.steps <= 2 * o.mu or not 0 <= o.torch_profile <= o.steps:
        parser.error(
            "use --mu >= 2, --steps > 2 * --mu (the first group is warm-up), and 0 <= --torch-profile <= --steps"
        )
    bench = bench_rollouts.parse_args(["--work", o.work, "--objective", o.objective, "--no-trl"])
    shared = bench_rollouts.load_shared(bench)
    shared.student.load_state_dict(shared.start_state)
    torch.manual_seed(0)
    regions = Regions(o.mu)
    for label, (owner, name) in REGIONS.items():
        setattr(owner, name, regions.timed(label, getattr(owner, name)))
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = fdistill_trainer(
            bench, shared.student, shared.teacher, shared.tokenizer, shared.train_data, o.objective, out_dir,
            exact=False, use_chat_template=True, max_prompt_length=bench.prompt, num_iterations=o.mu, max_steps=o.steps,
        )  # fmt: skip
        objective = trainer.objective
        trainer.objective = type("Timed", (), {"__getattr__": lambda _, n: getattr(objective, n)})()
        trainer.objective.loss = regions.timed("objective", objective.loss)
        trainer.accelerator.backward = regions.timed("backward", trainer.accelerator.backward)
        training_step = trainer.training_step

        def step(*args, **kwargs):
            if trainer.state.global_step + 1 != o.torch_profile:
                return training_step(*args, **kwargs)
            with torch.profiler.profile(record_shapes=True) as profile:
                result = training_step(*args, **kwargs)
            print(profile.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
            return result

        trainer.training_step = step
        trainer.add_callback(regions)
        trainer.train()
    print(regions.table())


if __name__ == "__main__":
    main()
