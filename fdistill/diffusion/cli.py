"""`fdistill diffusion …`: few-step diffusion distillation from a recipe (``recipes/diffusion/*.yaml``; ``key=value``
arguments override recipe keys). Every sub-command resumes finished stages and checks its settings first.

    fdistill diffusion experiment recipes/diffusion/toy2d.yaml             # teacher + every method × seed, table
    fdistill diffusion teacher recipes/diffusion/digits.yaml               # train (or load) the shared teacher
    fdistill diffusion distill recipes/diffusion/digits.yaml --method pd --seed 0
    fdistill diffusion sample recipes/diffusion/digits.yaml --model pd --steps 4 --num 64 --out samples/
    fdistill diffusion evaluate recipes/diffusion/digits.yaml --seed 0     # every finished sampler of a seed
"""

from __future__ import annotations

import json
import os

from fdistill.errors import invalid

MODELS = ("teacher", "guided-teacher", "kd", "pd", "vsd", "dmd", "guidance")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="diffusion_command", required=True)
    for name, text in [
        (
            "experiment",
            ("teacher, offline pairs, every method over every seed; writes table.md, results.json and plots"),
        ),
        ("teacher", "train (or load) the recipe's teacher"),
        ("distill", "distil one method's student(s) for one seed from the trained teacher"),
        ("sample", "draw samples from a trained teacher or student"),
        ("evaluate", "evaluate the teacher and every finished student of one seed"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="experiment YAML (keys: DiffusionExperimentConfig fields)")
        p.add_argument("overrides", nargs="*", help="key=value pairs overriding the recipe, e.g. kd_steps=200")
        if name in ("distill", "sample", "evaluate"):
            p.add_argument("--seed", type=int, default=0, help="student seed")
        if name == "distill":
            p.add_argument("--method", required=True, help="kd, pd, vsd, dmd or guidance")
        if name == "sample":
            p.add_argument("--model", required=True, help=f"one of {', '.join(MODELS)}")
            p.add_argument("--steps", type=int, default=None, help="DDIM steps (students: one they were trained for)")
            p.add_argument("--num", type=int, default=64, help="number of samples")
            p.add_argument("--out", required=True, help="folder for samples.safetensors, samples.json, samples.png")


def _check_sample_args(args, config) -> int:
    """The ``--steps`` to sample with (a student's: one it was distilled for), after checking the arguments."""
    from .experiment import DISTILLERS

    if args.model not in MODELS:
        raise invalid("--model", args.model, f"choose one of {list(MODELS)}.")
    if args.num < 1:
        raise invalid("--num", args.num, "give a whole number ≥ 1.")
    allowed = DISTILLERS[args.model].step_counts(config) if args.model in DISTILLERS else None
    steps = args.steps if args.steps is not None else (allowed[-1] if allowed else max(config.eval_steps))
    if allowed and steps not in allowed:
        raise invalid("--steps", steps, f"the {args.model} student samples with {allowed} steps.")
    if steps < 1 or steps > config.num_train_timesteps:
        raise invalid("--steps", steps, f"give a whole number in [1, {config.num_train_timesteps}].")
    return steps


def run(args) -> None:
    """Check the arguments, then run the sub-command (each resumes finished stages)."""
    import torch

    import fdistill.checks as checks

    from .experiment import DISTILLERS, Problem, get_teacher, load_experiment_config, run_experiment

    config = load_experiment_config(args.recipe, args.overrides)
    command = args.diffusion_command
    if getattr(args, "seed", 0) < 0:
        raise invalid("--seed", args.seed, "give a whole number ≥ 0.")
    if command == "distill" and args.method not in DISTILLERS:
        raise invalid("--method", args.method, f"choose one of {list(DISTILLERS)}.")
    steps = None
    if command == "sample":
        steps = _check_sample_args(args, config)
        checks.output_folder("--out", args.out)
    torch.set_num_threads(config.threads)
    if command == "experiment":
        run_experiment(config)
        return
    problem = Problem(config)
    teacher, record = get_teacher(config, problem, train=command == "teacher")
    if command == "teacher":
        print(json.dumps({k: v for k, v in record.items() if k != "history"}))
    elif command == "distill":
        _distill(args, config, problem, teacher)
    elif command == "evaluate":
        _evaluate(args, config, problem, teacher)
    else:
        _sample(args, config, problem, teacher, steps)


def _distill(args, config, problem, teacher) -> None:
    """Train (or resume) ``--method``'s students of ``--seed``; one JSON line a sampler."""
    from .experiment import distill, get_pairs, needs_pairs

    pairs = get_pairs(config, problem, teacher) if needs_pairs([args.method]) else None
    for s in distill(config, problem, teacher, args.method, args.seed, pairs):
        print(json.dumps({"model": s.name, "steps": s.steps, **{k: v for k, v in s.record.items() if k != "history"}}))


def _evaluate(args, config, problem, teacher) -> None:
    """Evaluate the teacher and every finished student of ``--seed``; one JSON line a row."""
    from .experiment import Scorer, distill, evaluate_samplers

    students = []
    for method in config.methods:
        try:
            students += distill(config, problem, teacher, method, args.seed, None, train=False)
        except ValueError as err:
            print(f"skipping {method}: {err}")
    rows, _ = evaluate_samplers(config, problem, teacher, students, args.seed, Scorer(config, problem), log=None)
    for row in rows:
        print(json.dumps(row))


def _sample(args, config, problem, teacher, steps: int) -> None:
    """``--num`` samples of ``--model`` at ``steps`` into ``--out`` (safetensors, JSON, a grid for digits)."""
    import torch

    from .experiment import distill, run_sampler

    generator = torch.Generator().manual_seed(50_000 + args.seed)
    noise = torch.randn((args.num, *problem.shape), generator=generator)
    labels = torch.arange(args.num) % problem.num_classes
    if config.student_classes == "unconditional" and args.model not in ("guided-teacher", "guidance"):
        labels = torch.full_like(labels, problem.num_classes)  # these samplers were distilled without a class
    if args.model in ("teacher", "guided-teacher"):
        guided = args.model == "guided-teacher"
        net, w = teacher, (config.guidance_weight if guided else None)
    else:
        found = {s.steps: s for s in distill(config, problem, teacher, args.model, args.seed, None, train=False)}
        net, w, guided = found[steps].net, found[steps].w, False
    samples, seconds = run_sampler(problem, net, steps, noise, labels, w, guided)
    _save_samples(args, config, steps, samples, labels, w, guided, seconds)


def _save_samples(args, config, steps, samples, labels, w, guided, seconds) -> None:
    from safetensors.torch import save_file

    os.makedirs(args.out, exist_ok=True)
    save_file({"samples": samples.contiguous(), "labels": labels}, os.path.join(args.out, "samples.safetensors"))
    meta = {
        "model": args.model,
        "steps": steps,
        "nfe_per_sample": steps * (2 if guided else 1),
        "guidance_weight": w,
        "seed": args.seed,
        "num": args.num,
        "seconds": seconds,
        "recipe": args.recipe,
        "overrides": list(args.overrides),
    }
    with open(os.path.join(args.out, "samples.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if config.dataset == "digits":
        from fdistill.flows.metrics import save_sample_grid

        save_sample_grid(
            {f"{args.model} K={steps}": samples / 2 + 0.5},
            os.path.join(args.out, "samples.png"),
            per_row=min(args.num, 32),
        )
    print(json.dumps(meta))
