"""Evaluation of a diffusion experiment: every sampler of one seed (teacher, guided teacher, each distilled
`Sampler`) on the same noise and classes, scored by one `Scorer` (toy: likelihood, modes, energy distance;
digits: digits-FD and class accuracy) plus MSE to the teacher's many-step output and samples per second."""

from __future__ import annotations

import time

import torch

from fdistill.runner import run_stage

from ..ddim import ddim_sample
from ..methods import guided_x0, predict_x0
from ..models import num_parameters
from .distillers import Sampler


def eval_inputs(config, problem, seed: int):
    """The evaluation noise and (balanced) classes of one seed, shared by every sampler."""
    g = torch.Generator().manual_seed(50_000 + seed)
    noise = torch.randn((config.num_eval_samples, *problem.shape), generator=g)
    labels = torch.arange(config.num_eval_samples) % problem.num_classes
    return noise, labels


@torch.no_grad()
def run_sampler(problem, net, steps: int, noise, labels, w=None, guided_teacher=False, batch=500):
    """Samples and seconds; ``guided_teacher`` uses two calls per step, a w-input student one."""
    start, chunks = time.perf_counter(), []
    for i in range(0, len(noise), batch):
        x, c = noise[i : i + batch], labels[i : i + batch]
        wv = None if w is None else torch.full((len(x),), float(w))

        def fn(x_, t_, c=c, wv=wv):
            if guided_teacher:
                return guided_x0(net, problem.schedule, x_, t_, c, w)
            return predict_x0(net, problem.schedule, x_, t_, c, wv)

        chunks.append(ddim_sample(fn, x, problem.schedule, steps))
    return torch.cat(chunks), time.perf_counter() - start


class Scorer:
    """One scoring function for every sampler of an experiment."""

    def __init__(self, config, problem, log=print):
        self.problem = problem
        if config.dataset == "toy2d":
            self.reference, _ = problem.ring.sample(config.num_eval_samples, torch.Generator().manual_seed(777))
            self.floor = None
        else:
            self.digits_scorer = self._digits(config, problem, log)
            real = problem.digits.to_model(problem.digits.train, torch.Generator().manual_seed(778))
            self.floor = self.digits_scorer(real, problem.digits.labels("train"))  # all training digits vs test

    @staticmethod
    def _digits(config, problem, log):
        from fdistill.flows.metrics import DigitsFeatureNet, train_digits_feature_net

        from ..metrics import DigitsScorer

        data = problem.digits.flow_data

        def work():
            net, accuracy = train_digits_feature_net(data, config.feature_epochs)
            return net.state_dict(), {"accuracy": accuracy}

        result = run_stage(
            config.output_dir,
            "digits_feature_net",
            {"split_seed": config.split_seed, "feature_epochs": config.feature_epochs},
            work,
            log,
        )
        net = DigitsFeatureNet()
        net.load_state_dict(result.tensors)
        net.eval()
        if log:
            log(f"digits classifier (fdistill.flows.metrics): test accuracy {result.record['accuracy']:.3f}")
        test = problem.digits.to_model(data.test, torch.Generator().manual_seed(779))
        return DigitsScorer(net, test)

    def __call__(self, samples, labels) -> dict:
        from ..metrics import toy_metrics

        if self.floor is None:
            return toy_metrics(samples, labels, self.problem.ring, self.reference)
        return self.digits_scorer(samples, labels)


def evaluate_samplers(
    config, problem, teacher, students: list[Sampler], seed: int, scorer, log=print
) -> tuple[list[dict], dict]:
    """Every sampler of one seed on the same noise and classes; MSE to the teacher's (guided teacher's for guided
    rows) ``max(eval_steps)``-step output from the same noise."""
    from ..metrics import mse_to

    noise, labels = eval_inputs(config, problem, seed)
    plain = torch.full_like(labels, problem.num_classes) if config.student_classes == "unconditional" else labels
    top = max(config.eval_steps)
    reference = {False: run_sampler(problem, teacher, top, noise, plain)[0]}
    guided = "guidance" in config.methods
    if guided:
        reference[True] = run_sampler(problem, teacher, top, noise, labels, config.guidance_weight, True)[0]
    rows = []

    def add(model, steps, nfe, samples, seconds, is_guided, params):
        scores = scorer(samples, labels)
        if not is_guided and plain is not labels:
            scores["class_accuracy"] = None  # unconditional samples have no requested class
        row = {
            "model": model,
            "seed": seed,
            "steps": steps,
            "nfe": nfe,
            **scores,
            "mse_to_teacher": mse_to(samples, reference[is_guided]),
            "samples_per_s": len(samples) / seconds,
            "parameters": params,
        }
        rows.append(row)
        if log:
            log(
                f"[eval seed {seed}] "
                + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            )
        return samples

    samples_for_plot = {}
    params = num_parameters(teacher)
    for steps in config.eval_steps:
        samples_for_plot[("teacher", steps)] = add(
            "teacher", steps, steps, *run_sampler(problem, teacher, steps, noise, plain), False, params
        )
        if guided:
            samples_for_plot[("guided teacher", steps)] = add(
                "guided teacher",
                steps,
                2 * steps,
                *run_sampler(problem, teacher, steps, noise, labels, config.guidance_weight, True),
                True,
                params,
            )
    for student in students:
        given = labels if student.w is not None else plain
        samples, seconds = run_sampler(problem, student.net, student.steps, noise, given, student.w)
        samples_for_plot[(student.name, student.steps)] = add(
            student.name, student.steps, student.steps, samples, seconds, student.w is not None, params
        )
    return rows, samples_for_plot
