"""`fdistill flows …`: train a teacher flow, distil a student with a chosen loss mix, evaluate, or run a whole
experiment table from a recipe (``recipes/flows/*.yaml``; ``key=value`` arguments override recipe keys).

    fdistill flows experiment recipes/flows/digits_glow.yaml            # teacher + every method × seed, table
    fdistill flows teacher recipes/flows/digits_glow.yaml --seed 0
    fdistill flows distill recipes/flows/digits_glow.yaml --method ilkd --seed 0
    fdistill flows distill recipes/flows/digits_glow.yaml --weights nll=0.8,ilkd=0.2   # → runs/custom-nll0.8-ilkd0.2_seed0
    fdistill flows evaluate recipes/flows/digits_glow.yaml --model flows_output/runs/ilkd_seed0
"""

from __future__ import annotations

import dataclasses
import json
import os

from fdistill.errors import InputError, invalid


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="flows_command", required=True)
    for name, text in [
        ("experiment", "teacher + every method over every seed; writes table.md, results.json, samples.png"),
        ("teacher", "train and evaluate the teacher of one seed"),
        ("distill", "distil one student from the seed's trained teacher"),
        ("evaluate", "evaluate a saved flow on the recipe's test split"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="experiment YAML (keys: FlowExperimentConfig fields)")
        p.add_argument("overrides", nargs="*", help="key=value pairs overriding the recipe, e.g. student_epochs=20")
        if name in ("teacher", "distill"):
            p.add_argument("--seed", type=int, default=0)
        if name == "distill":
            p.add_argument("--method", default=None, help="a method of the recipe's method_weights (nll/lkd/ilkd/skd)")
            p.add_argument("--weights", default=None, help="a custom loss mix, e.g. nll=0.9,ilkd=0.1")
        if name == "evaluate":
            p.add_argument("--model", required=True, help="folder of a saved flow (flow.json + flow.safetensors)")


def _parse_weights(text: str) -> dict:
    """``"nll=0.9,ilkd=0.1"`` → ``{"nll": 0.9, "ilkd": 0.1}``; anything else is one InputError naming the item."""
    weights = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("nll", "lkd", "ilkd", "skd") or key in weights:
            raise invalid(
                "--weights item",
                item,
                "write name=value pairs of nll, lkd, ilkd, skd, each once, e.g. --weights nll=0.9,ilkd=0.1.",
            )
        try:
            weights[key] = float(value)
        except ValueError:
            raise invalid("--weights item", item, "the weight must be a number, e.g. ilkd=0.1.") from None
    return weights


def run(args) -> None:
    from .experiment import (
        _feature_fn,
        _load_done,
        distill_student,
        evaluate_flow,
        load_experiment_config,
        preflight,
        run_experiment,
        train_teacher,
    )
    from .models import load_flow

    config = load_experiment_config(args.recipe, args.overrides)
    if getattr(args, "seed", 0) < 0:
        raise invalid("--seed", args.seed, "give a whole number ≥ 0.")
    if args.flows_command == "distill":
        if bool(args.method) == bool(args.weights):
            raise InputError("give exactly one of --method NAME or --weights nll=…,ilkd=…")
        if args.weights:  # a custom mix is named after its weights: different mixes never share a run folder
            weights = _parse_weights(args.weights)
            method = "custom-" + "-".join(f"{k}{v:g}" for k, v in weights.items())
            config = dataclasses.replace(config, method_weights={**config.method_weights, method: weights})
        else:
            method = args.method
        if method not in config.method_weights:
            raise InputError(f"unknown method {method!r}; the recipe defines {sorted(config.method_weights)}")
        teacher_dir = os.path.join(config.output_dir, f"teacher_seed{args.seed}")
        done = _load_done(teacher_dir, config.run_settings("teacher"))  # trained with these settings, or an error
        if not done:
            raise InputError(
                f"no trained teacher in {teacher_dir}; run `fdistill flows teacher {args.recipe} "
                f"--seed {args.seed}` (with the same overrides) first"
            )
    if args.flows_command == "evaluate" and not os.path.exists(os.path.join(args.model, "flow.json")):
        raise InputError(f"{args.model} holds no saved flow (flow.json missing)")
    if args.flows_command == "experiment":
        run_experiment(config)
        return
    data = preflight(config, [method] if args.flows_command == "distill" else [])
    os.makedirs(config.output_dir, exist_ok=True)
    features, _ = _feature_fn(config, data, print)
    if args.flows_command == "teacher":
        train_teacher(config, data, args.seed, features)
    elif args.flows_command == "distill":
        distill_student(config, data, done[0], method, args.seed, features)
    else:
        print(json.dumps(evaluate_flow(load_flow(args.model), data, features, config, seed=0), indent=2))
