"""The flow-distillation experiment: train a teacher, distil students with each loss mix over several seeds,
evaluate them all the same way, and write a table, a JSON summary and a sample grid.

Resumable: every finished teacher and student run is saved under ``output_dir`` (``teacher_seed{s}/``,
``runs/{method}_seed{s}/``, each written to a temporary folder and renamed when complete); a rerun skips them.

Example recipe (``recipes/flows/digits_glow.yaml``)::

    dataset: digits
    flow: glow
    teacher: {levels: 3, depth: 8, hidden: 64}
    student: {levels: 3, depth: 2, hidden: 32}
    methods: [nll, lkd, ilkd, skd]
    seeds: [0, 1, 2]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fdistill.errors import InputError, invalid
from fdistill.runner import run_stage
from fdistill.torch_utils import seeded
from fdistill.yaml_config import load_dataclass_config

from . import checks
from .data import FLOW_DATASETS, FlowData, bits_per_dim, load_flow_data
from .losses import DISTANCES, LossWeights, align_paths
from .metrics import (
    DigitsFeatureNet,
    bootstrap_frechet,
    mmd_rbf,
    sampling_throughput,
    save_sample_grid,
    train_digits_feature_net,
)
from .models import FLOW_CLASSES, Flow, build_flow, check_architecture, load_flow, save_flow
from .training import FlowTrainingArguments, evaluate_nll, train_flow

ALIGNMENTS = ("auto", "levels", "uniform")
DEFAULT_METHOD_WEIGHTS = {
    "nll": {"nll": 1.0},  # the baseline student: same architecture and budget, no teacher
    "lkd": {"nll": 0.9, "lkd": 0.1},
    "ilkd": {"nll": 0.9, "ilkd": 0.1},  # the paper's default
    "skd": {"nll": 0.9, "skd": 0.1},
}


@dataclass
class FlowExperimentConfig:
    """One experiment; every key of a recipe YAML is a field here."""

    dataset: str = field(default="digits", metadata={"help": f"one of {FLOW_DATASETS}"})
    data_root: str | None = field(default=None, metadata={"help": "folder of the MAF data archive (paper sets)"})
    split_seed: int = 0
    flow: str = field(default="glow", metadata={"help": f"one of {sorted(FLOW_CLASSES)}"})
    teacher: dict = field(
        default_factory=lambda: {"levels": 3, "depth": 8, "hidden": 64},
        metadata={"help": "architecture sizes (glow: levels, depth, hidden; maf/iaf: blocks, hidden, hidden_layers)"},
    )
    student: dict = field(default_factory=lambda: {"levels": 3, "depth": 2, "hidden": 32})
    teacher_epochs: int = 100
    student_epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-3
    max_grad_norm: float = 10.0
    methods: list[str] = field(default_factory=lambda: ["nll", "lkd", "ilkd", "skd"])
    method_weights: dict[str, dict[str, float]] = field(
        default_factory=dict, metadata={"help": "loss weights per method name; merged over DEFAULT_METHOD_WEIGHTS"}
    )
    alignment: str = field(default="auto", metadata={"help": "ILKD alignment: 'levels', 'uniform' or 'auto'"})
    distance: str = field(default="l1", metadata={"help": f"latent distance, one of {DISTANCES}"})
    skd_temperature: float = 0.7
    skd_warmup_epochs: int = 10
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    teacher_per_seed: bool = field(default=True, metadata={"help": "a teacher per seed (else one teacher, seed 0)"})
    num_samples: int = 1000
    sample_temperature: float = 1.0
    bootstrap_rounds: int = 100
    feature_epochs: int = 30
    output_dir: str = "flows_output"

    def __post_init__(self):
        """Every setting checked before anything is loaded, trained or written: one error naming value and fix."""
        if not isinstance(self.method_weights, dict):
            raise invalid("method_weights", self.method_weights, "give a mapping {method: {nll: 0.9, ilkd: 0.1}}.")
        self.method_weights = {**DEFAULT_METHOD_WEIGHTS, **self.method_weights}  # a recipe adds or redefines methods
        if not isinstance(self.dataset, str) or self.dataset.lower() not in FLOW_DATASETS:
            raise InputError(f"unknown dataset {self.dataset!r}; choose one of {FLOW_DATASETS}")
        if self.flow not in FLOW_CLASSES:
            raise InputError(f"unknown flow {self.flow!r}; choose one of {sorted(FLOW_CLASSES)}")
        if not isinstance(self.methods, list) or not self.methods:
            raise invalid(
                "methods", self.methods, f"give a non-empty list of names from {sorted(self.method_weights)}."
            )
        unknown = [m for m in self.methods if m not in self.method_weights]
        if unknown:
            raise InputError(
                f"methods {unknown} have no entry in method_weights (known: {sorted(self.method_weights)})"
            )
        checks.names("methods", self.methods, self.method_weights)  # no repeats
        for method, weights in self.method_weights.items():
            try:
                LossWeights(**weights)
            except TypeError as err:
                raise InputError(f"method_weights[{method!r}] = {weights}: keys must be nll, lkd, ilkd, skd") from err
        if self.distance not in DISTANCES:
            raise InputError(f"unknown distance {self.distance!r}; choose one of {DISTANCES}")
        if (
            not isinstance(self.seeds, list)
            or not self.seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds)
        ):
            raise InputError(f"seeds={self.seeds!r} must be a non-empty list of ints, e.g. [0, 1, 2]")
        checks.whole_numbers("seeds", self.seeds, low=0, example="[0, 1, 2]")
        if self.alignment not in ALIGNMENTS:
            raise InputError(f"unknown alignment {self.alignment!r}; choose one of {ALIGNMENTS}")
        for name in ("teacher", "student"):
            if not isinstance(getattr(self, name), dict):
                raise InputError(f"{name} must be a mapping of constructor arguments, e.g. {{levels: 3, depth: 2}}")
            check_architecture(self.flow, getattr(self, name), role=name, from_data=True)
        integers = {
            "teacher_epochs": 1,
            "student_epochs": 1,
            "batch_size": 1,
            "num_samples": 2,
            "bootstrap_rounds": 1,
            "feature_epochs": 1,
            "skd_warmup_epochs": 0,
            "split_seed": 0,
        }
        for name, low in integers.items():
            checks.whole_number(name, getattr(self, name), low)
        for name in ("learning_rate", "max_grad_norm", "skd_temperature", "sample_temperature"):
            checks.number(name, getattr(self, name))
        if not isinstance(self.teacher_per_seed, bool):
            raise invalid("teacher_per_seed", self.teacher_per_seed, "use true or false.")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise invalid("data_root", self.data_root, "give the folder of the unpacked MAF data archive.")
        checks.output_folder("output_dir", self.output_dir)
        if (
            any(self.method_weights[m].get("skd", 0) for m in self.methods)
            and self.skd_warmup_epochs >= self.student_epochs
        ):
            raise InputError(
                f"skd_warmup_epochs={self.skd_warmup_epochs} ≥ student_epochs={self.student_epochs}: "
                "SKD would never be applied; lower the warm-up"
            )

    def resolved_alignment(self) -> str:
        """``auto``: level ends for Glow; every block for MAF/IAF (one level, where level ends would equal LKD)."""
        if self.alignment != "auto":
            return self.alignment
        return "levels" if self.flow == "glow" else "uniform"

    def run_settings(self, role: str, method: str | None = None) -> dict:
        """What a saved run must have been trained with to be reused (compared on resume)."""
        common = {
            "dataset": self.dataset.lower(),
            "data_root": self.data_root,
            "split_seed": self.split_seed,
            "flow": self.flow,
            "teacher": self.teacher,
            "teacher_epochs": self.teacher_epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "max_grad_norm": self.max_grad_norm,
            "teacher_per_seed": self.teacher_per_seed,
        }
        if role == "teacher":
            return common
        weights = dataclasses.asdict(LossWeights(**self.method_weights[method]))
        return {
            **common,
            "student": self.student,
            "student_epochs": self.student_epochs,
            "weights": weights,
            "alignment": self.resolved_alignment() if weights["ilkd"] else None,
            "distance": self.distance if weights["lkd"] or weights["ilkd"] or weights["skd"] else None,
            "skd_temperature": self.skd_temperature if weights["skd"] else None,
            "skd_warmup_epochs": self.skd_warmup_epochs if weights["skd"] else None,
        }


def load_experiment_config(path: str | None = None, overrides: list[str] | None = None) -> FlowExperimentConfig:
    """Read a recipe YAML (if given) and apply ``key=value`` overrides (values parsed as YAML)."""
    return load_dataclass_config(FlowExperimentConfig, path, overrides)


def _architecture(config: FlowExperimentConfig, data: FlowData, part: dict) -> dict:
    """Constructor arguments: the recipe's, plus the data's shape."""
    args = dict(part)
    if config.flow == "glow":
        if len(data.event_shape) == 3:
            args["image_shape"] = data.event_shape
        else:
            args["features"] = data.num_features
    else:
        if len(data.event_shape) != 1:
            raise InputError(f"{config.flow} models vectors; data set {data.name!r} has shape {data.event_shape}")
        args["features"] = data.num_features
    return args


def _feature_fn(config: FlowExperimentConfig, data: FlowData, log) -> tuple:
    """Features for the sample-quality metrics: the local digits network's, or the standardised tabular values."""
    if data.labels is None:
        return (lambda x: x.flatten(1)), {"features": "standardised data values"}
    settings = {"dataset": data.name, "split_seed": config.split_seed, "feature_epochs": config.feature_epochs}

    def work():
        trained, accuracy = train_digits_feature_net(data, config.feature_epochs)
        return trained.state_dict(), {"accuracy": accuracy}

    stage = run_stage(config.output_dir, "digits_feature_net", settings, work, log=None)  # .safetensors + .json
    net = DigitsFeatureNet()
    net.load_state_dict(stage.tensors)
    net.eval()
    accuracy = stage.record.get("accuracy", stage.extra.get("accuracy"))  # top level in folders written before #16
    log(f"digits feature network: test accuracy {accuracy:.3f}")

    @torch.no_grad()
    def features(x):
        return net.features(data.to_data_range(x))

    return features, {
        "features": "digits-FD: penultimate layer of a locally trained digits CNN",
        "feature_net_test_accuracy": accuracy,
    }


@torch.no_grad()
def evaluate_flow(flow: Flow, data: FlowData, features, config: FlowExperimentConfig, seed: int) -> dict:
    """Test NLL (nats/dim, bits/dim for digits), FD (+95% bootstrap interval), MMD², parameters, samples/s."""
    flow.eval()
    nll = evaluate_nll(flow, data, "test", seed=0)
    generator = torch.Generator().manual_seed(10_000 + seed)
    samples = flow.sample(config.num_samples, config.sample_temperature, generator)
    finite = torch.isfinite(samples.flatten(1)).all(1)
    reference = data.model_inputs(data.test, torch.Generator().manual_seed(0))
    metrics = {
        "test_nll": nll,
        "bits_per_dim": bits_per_dim(nll, data.levels),
        "parameters": flow.num_parameters(),
        "nonfinite_samples": int((~finite).sum()),
    }
    if finite.sum() >= 2:
        fd, low, high = bootstrap_frechet(
            features(samples[finite]).numpy(), features(reference).numpy(), config.bootstrap_rounds, seed
        )
        metrics.update(
            fd=fd,
            fd_low=low,
            fd_high=high,
            mmd=mmd_rbf(data.to_data_range(samples[finite]), data.to_data_range(reference)),
        )
    else:
        metrics.update(fd=math.nan, fd_low=math.nan, fd_high=math.nan, mmd=math.nan)
    metrics["samples_per_second"] = sampling_throughput(flow, config.num_samples)
    return metrics


def _atomic_save(directory: str, flow: Flow, record: dict) -> None:
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_flow(flow, tmp)
    with open(os.path.join(tmp, "result.json"), "w") as f:
        json.dump(record, f, indent=2)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def _load_done(directory: str, settings: dict) -> tuple[Flow, dict] | None:
    """A finished run to reuse, or None; a finished run trained with other settings is an error, not reused."""
    record = checks.read_stage_json(os.path.join(directory, "result.json"), settings, delete=directory)
    return None if record is None else (load_flow(directory), record)


def _training_args(config: FlowExperimentConfig, epochs: int, seed: int) -> FlowTrainingArguments:
    return FlowTrainingArguments(
        epochs=epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        max_grad_norm=config.max_grad_norm,
        skd_warmup_epochs=config.skd_warmup_epochs,
        seed=seed,
    )


def train_teacher(config: FlowExperimentConfig, data: FlowData, seed: int, features, log=print) -> tuple[Flow, dict]:
    """Train (or reload) the teacher of ``seed`` and evaluate it."""
    directory = os.path.join(config.output_dir, f"teacher_seed{seed}")
    settings = config.run_settings("teacher")
    done = _load_done(directory, settings)
    if done:
        log(f"teacher seed {seed}: reusing {directory}")
        return done
    with seeded(seed):  # the initial weights (drawn by the layers from torch's global RNG) are a function of seed
        teacher = build_flow(config.flow, **_architecture(config, data, config.teacher))
    start = time.perf_counter()
    result = train_flow(
        teacher, data, _training_args(config, config.teacher_epochs, seed), log=log, name=f"teacher seed {seed}"
    )
    record = {
        "model": "teacher",
        "seed": seed,
        "settings": settings,
        "train_seconds": time.perf_counter() - start,
        "best_epoch": result.best_epoch,
        "skipped_steps": result.skipped_steps,
        "diverged": result.diverged,
        "diverged_at": result.diverged_at,
        **evaluate_flow(teacher, data, features, config, seed),
        "history": result.history,
    }
    _atomic_save(directory, teacher, record)
    log(f"teacher seed {seed}: {record}")
    return teacher, record


def distill_student(
    config: FlowExperimentConfig, data: FlowData, teacher: Flow, method: str, seed: int, features, log=print
) -> tuple[Flow, dict]:
    """Train (or reload) one student with ``method``'s loss weights against ``teacher``, and evaluate it."""
    directory = os.path.join(config.output_dir, "runs", f"{method}_seed{seed}")
    settings = config.run_settings("student", method)
    done = _load_done(directory, settings)
    if done:
        log(f"{method} seed {seed}: reusing {directory}")
        return done
    weights = LossWeights(**config.method_weights[method])
    with seeded(1000 + seed):
        student = build_flow(config.flow, **_architecture(config, data, config.student))
    alignment = align_paths(student.depths, teacher.depths, config.resolved_alignment()) if weights.ilkd else None
    start = time.perf_counter()
    result = train_flow(
        student,
        data,
        _training_args(config, config.student_epochs, seed),
        weights,
        teacher if weights.needs_teacher else None,
        alignment,
        config.distance,
        config.skd_temperature,
        log=log,
        name=f"{method} student seed {seed}",
    )
    record = {
        "model": method,
        "seed": seed,
        "settings": settings,
        "weights": dataclasses.asdict(weights),
        "alignment": [list(pair) for pair in alignment] if alignment else None,
        "train_seconds": time.perf_counter() - start,
        "best_epoch": result.best_epoch,
        "skipped_steps": result.skipped_steps,
        "diverged": result.diverged,
        "diverged_at": result.diverged_at,
        **evaluate_flow(student, data, features, config, seed),
        "history": result.history,
    }
    _atomic_save(directory, student, record)
    log(f"{method} seed {seed}: {record}")
    return student, record


def _mean_std(values: list[float]) -> str:
    """``mean ± std`` over seeds; a non-finite value (a failed run) is shown, never silently dropped."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "—"
    text = f"{np.mean(finite):.3f} ± {np.std(finite, ddof=1) if len(finite) > 1 else 0.0:.3f}"
    return text if len(finite) == len(values) else f"{text} ({len(values) - len(finite)} of {len(values)} non-finite)"


def _count(rows: list[dict], key: str) -> str:
    """Sum of a per-run count over seeds; 'n/a' when a run did not record it (never a made-up 0)."""
    if any(r.get(key) is None for r in rows):
        return "n/a"
    return str(sum(int(r[key]) for r in rows))


def summarise(records: list[dict], data: FlowData, info: dict, num_samples: int) -> str:
    """A markdown table: one row per model, mean ± std over seeds (non-finite samples and skipped steps summed)."""
    nll_key, nll_name = ("bits_per_dim", "test bits/dim") if data.levels else ("test_nll", "test NLL (nats/dim)")
    fd_name = "digits-FD" if data.labels is not None else "FD (data space)"
    lines = [
        f"| model | parameters | {nll_name} ↓ | {fd_name} ↓ | MMD² ↓ | samples/s | seeds | non-finite samples | "
        "skipped steps | diverged runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in records):
        rows = [r for r in records if r["model"] == model]
        lines.append(
            f"| {model} | {rows[0]['parameters']:,} | {_mean_std([r[nll_key] for r in rows])} | "
            f"{_mean_std([r['fd'] for r in rows])} | {_mean_std([r['mmd'] for r in rows])} | "
            f"{np.mean([r['samples_per_second'] for r in rows]):,.0f} | {len(rows)} | "
            f"{sum(r['nonfinite_samples'] for r in rows)} / {len(rows) * num_samples} | "
            f"{_count(rows, 'skipped_steps')} | {_count(rows, 'diverged')} |"
        )
    baseline = {r["seed"]: r for r in records if r["model"] == "nll"}
    if baseline:
        lines += [
            "",
            "Paired with the NLL-only student of the same seed (same initialisation and data order; the "
            "distilled students learn from that seed's teacher): difference, mean ± std over seeds, and seeds "
            "where the method is better.",
            "",
            f"| model | Δ {nll_name} | seeds better | Δ {fd_name} | seeds better |",
            "|---|---|---|---|---|",
        ]
        for model in dict.fromkeys(r["model"] for r in records if r["model"] not in ("nll", "teacher")):
            rows = [r for r in records if r["model"] == model and r["seed"] in baseline]
            d_nll = [r[nll_key] - baseline[r["seed"]][nll_key] for r in rows]
            d_fd = [r["fd"] - baseline[r["seed"]]["fd"] for r in rows]
            lines.append(
                f"| {model} | {_mean_std(d_nll)} | {sum(d < 0 for d in d_nll)}/{len(rows)} | "
                f"{_mean_std(d_fd)} | {sum(d < 0 for d in d_fd)}/{len(rows)} |"
            )
    notes = [
        f"Data: {data.name} ({len(data.train)}/{len(data.validate)}/{len(data.test)} train/val/test), "
        f"features: {info['features']}"
        + (f" (test accuracy {info['feature_net_test_accuracy']:.3f})" if "feature_net_test_accuracy" in info else "")
    ]
    return "\n".join(lines + [""] + notes) + "\n"


def preflight(config: FlowExperimentConfig, methods: list[str] | None = None) -> FlowData:
    """Check everything that can fail before any training or writing: data files, both architectures, the ILKD
    alignment of every method that uses it. Returns the loaded data."""
    try:
        data = load_flow_data(config.dataset, config.data_root, config.split_seed)
    except FileNotFoundError as err:
        raise InputError(str(err)) from None
    flows = {}
    for role in ("teacher", "student"):
        try:
            flows[role] = build_flow(config.flow, **_architecture(config, data, getattr(config, role)))
        except TypeError as err:
            raise InputError(f"{role}={getattr(config, role)} does not fit flow={config.flow}: {err}") from None
    for method in methods if methods is not None else config.methods:
        if LossWeights(**config.method_weights[method]).ilkd:
            align_paths(flows["student"].depths, flows["teacher"].depths, config.resolved_alignment())
    return data


def run_experiment(config: FlowExperimentConfig, log=print) -> dict:
    """Run (or resume) the whole experiment; returns the summary written to ``output_dir/results.json``."""
    start = time.perf_counter()
    data = preflight(config)
    os.makedirs(config.output_dir, exist_ok=True)
    features, info = _feature_fn(config, data, log)
    records, grid = [], {}
    grid_u = torch.randn(16, data.num_features, generator=torch.Generator().manual_seed(123))
    for seed in config.seeds:
        teacher, record = train_teacher(
            config, data, seed if config.teacher_per_seed else config.seeds[0], features, log
        )
        records.append({**record, "seed": seed})
        for method in config.methods:
            student, record = distill_student(config, data, teacher, method, seed, features, log)
            records.append(record)
            if seed == config.seeds[0]:
                grid[f"{method} student"] = student
        if seed == config.seeds[0]:
            grid = {"teacher": teacher, **grid}
    table = summarise(records, data, info, config.num_samples)
    teacher_params = records[0]["parameters"]
    student_params = next((r["parameters"] for r in records if r["model"] != "teacher"), None)
    records = [{k: v for k, v in r.items() if k != "history"} for r in records]  # histories stay in each run
    summary = {
        "config": dataclasses.asdict(config),
        "records": records,
        "table": table,
        **info,
        "student_to_teacher_parameters": student_params / teacher_params if student_params else None,
        "wall_seconds_this_run": time.perf_counter() - start,
    }
    with open(os.path.join(config.output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(config.output_dir, "table.md"), "w") as f:
        f.write(table)
    if data.levels is not None:  # one shared base draw, so rows differ only by the model
        with torch.no_grad():
            rows = {
                name: data.to_data_range(flow.inverse(config.sample_temperature * grid_u))
                for name, flow in grid.items()
            }
        save_sample_grid(rows, os.path.join(config.output_dir, "samples.png"))
    log(table)
    return summary
