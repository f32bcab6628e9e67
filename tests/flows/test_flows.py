"""fdistill.flows: one contract over every flow class, the distillation losses, alignment, training guards, data,
metrics, and the experiment runner / CLI end to end on tiny settings."""

import copy
import json
import math
import os

import numpy as np
import pytest
import torch

from fdistill.flows import (
    IAF,
    MAF,
    FlowTrainingArguments,
    Glow,
    LossWeights,
    align_paths,
    bits_per_dim,
    distillation_loss,
    evaluate_nll,
    ilkd_loss,
    latent_distance,
    lkd_loss,
    load_experiment_config,
    load_flow,
    load_flow_data,
    nll_loss,
    run_experiment,
    save_flow,
    skd_loss,
    train_flow,
)
from fdistill.flows.experiment import _mean_std
from fdistill.flows.metrics import bootstrap_frechet, frechet_distance, mmd_rbf, save_sample_grid
from fdistill.flows.models import standard_normal_log_prob

FLOWS = {
    "glow-image": (lambda: Glow(image_shape=(1, 8, 8), levels=3, depth=2, hidden=8), (1, 8, 8)),
    "glow-image-2ch": (lambda: Glow(image_shape=(2, 4, 4), levels=2, depth=[1, 3], hidden=8), (2, 4, 4)),
    "glow-vector": (lambda: Glow(features=6, levels=2, depth=2, hidden=8), (6,)),
    "maf": (lambda: MAF(features=5, blocks=3, hidden=8), (5,)),
    "iaf": (lambda: IAF(features=5, blocks=3, hidden=8), (5,)),
}


def perturbed(name, seed=0, dtype=torch.float64):
    """A flow of ``name`` whose ActNorm is initialised on data and whose weights are moved off identity."""
    torch.manual_seed(seed)
    build, shape = FLOWS[name]
    flow = build().to(dtype)
    flow(torch.randn(16, *shape, dtype=dtype))  # ActNorm data init
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow.eval(), shape


@pytest.mark.parametrize("name", FLOWS)
def test_shapes_and_path(name):
    flow, shape = perturbed(name)
    out = flow(torch.randn(4, *shape, dtype=torch.float64))
    d = math.prod(shape)
    assert out.latent.shape == (4, d) and out.logdet.shape == (4,) and out.log_prob.shape == (4,)
    assert len(out.path) == sum(flow.depths)
    torch.testing.assert_close(out.log_prob, standard_normal_log_prob(out.latent) + out.logdet)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        flow(torch.randn(4, d + 1, dtype=torch.float64))


@pytest.mark.parametrize("name", FLOWS)
def test_inverse_of_forward_is_identity(name):
    flow, shape = perturbed(name)
    x = torch.randn(7, *shape, dtype=torch.float64)
    torch.testing.assert_close(flow.inverse(flow(x).latent), x, atol=1e-10, rtol=0)
    u = torch.randn(7, math.prod(shape), dtype=torch.float64)
    torch.testing.assert_close(flow(flow.inverse(u)).latent, u, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", FLOWS)
def test_logdet_equals_autograd_jacobian(name):
    flow, shape = perturbed(name)
    x = torch.randn(3, *shape, dtype=torch.float64)
    out = flow(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v.reshape(1, *shape)).latent[0], x[i].flatten())
        torch.testing.assert_close(out.logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", FLOWS)
def test_gradients_reach_parameters_and_save_load_round_trip(name, tmp_path):
    flow, shape = perturbed(name, dtype=torch.float32)
    x = torch.randn(8, *shape)
    nll_loss(flow(x)).backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) >= 0.8 * len(grads)
    save_flow(flow, tmp_path / "f")
    loaded = load_flow(tmp_path / "f")
    assert type(loaded) is type(flow) and loaded.depths == flow.depths
    torch.testing.assert_close(loaded(x).log_prob, flow(x).log_prob)


@pytest.mark.parametrize("name", FLOWS)
def test_distillation_losses_are_zero_for_a_copy_of_the_teacher(name):
    teacher, shape = perturbed(name)
    student = copy.deepcopy(teacher)
    x = torch.randn(6, *shape, dtype=torch.float64)
    s_out, t_out = student(x), teacher(x)
    pairs = align_paths(student.depths, teacher.depths, "uniform")
    assert pairs == [(i, i) for i in range(sum(teacher.depths))]
    for distance in ("l1", "l2"):
        assert lkd_loss(s_out, t_out, distance).item() == 0.0
        assert ilkd_loss(s_out, t_out, pairs, distance).item() == 0.0
        assert skd_loss(student, teacher, 5, 0.7, distance, torch.Generator().manual_seed(0)).item() == 0.0
    # and positive for a different student
    other, _ = perturbed(name, seed=1)
    assert lkd_loss(other(x), t_out).item() > 0 and ilkd_loss(other(x), t_out, pairs).item() > 0


def test_maf_block_is_autoregressive():
    flow, _ = perturbed("maf")
    x = torch.randn(5, dtype=torch.float64)
    block = flow.blocks[0][0]  # the masked autoregressive affine map alone
    jac = torch.autograd.functional.jacobian(lambda v: block(v[None])[0][0], x)
    assert torch.all(jac.triu(1) == 0) and torch.all(jac.diagonal() != 0)


def test_alignment_map_for_unequal_depths():
    assert align_paths([2, 2, 2], [8, 8, 8], "levels") == [(1, 7), (3, 15), (5, 23)]
    assert align_paths([2, 2, 2], [8, 8, 8], "uniform") == [(0, 3), (1, 7), (2, 11), (3, 15), (4, 19), (5, 23)]
    assert align_paths([5], [15], "uniform") == [(j - 1, 3 * j - 1) for j in range(1, 6)]
    assert align_paths([1, 2], [3, 3], "uniform") == [(0, 2), (1, 4), (2, 5)]
    # aligned Glow states have equal shapes for a shallower, narrower student
    teacher = Glow(image_shape=(1, 8, 8), levels=3, depth=4, hidden=16)
    student = Glow(image_shape=(1, 8, 8), levels=3, depth=[1, 2, 1], hidden=8)
    x = torch.rand(2, 1, 8, 8)
    s_path, t_path = student(x).path, teacher(x).path
    for i, j in align_paths(student.depths, teacher.depths, "uniform"):
        assert s_path[i].shape == t_path[j].shape
    with pytest.raises(ValueError, match="same number of levels"):
        align_paths([2, 2], [4, 4, 4])
    with pytest.raises(ValueError, match="more steps"):
        align_paths([5], [3])
    with pytest.raises(ValueError, match="alignment mode"):
        align_paths([1], [3], "every")


def test_latent_distance_and_weights():
    a, b = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 0.0]])
    assert latent_distance(a, b, "l1").item() == 1.5 and latent_distance(a, b, "l2").item() == 2.5
    with pytest.raises(ValueError, match="unknown distance"):
        latent_distance(a, b, "cos")
    with pytest.raises(ValueError, match="shapes differ"):
        latent_distance(a, b[:, :1])
    with pytest.raises(ValueError, match="all loss weights are zero"):
        LossWeights(nll=0)
    with pytest.raises(ValueError, match="must be ≥ 0"):
        LossWeights(ilkd=-1)


def test_distillation_loss_is_the_weighted_sum_and_ilkd_pulls_the_student_to_the_teacher():
    teacher, _ = perturbed("glow-vector", seed=0, dtype=torch.float32)
    torch.manual_seed(3)
    student = Glow(features=6, levels=2, depth=1, hidden=8)
    x = torch.randn(32, 6)
    weights = LossWeights(nll=0.9, lkd=0.2, ilkd=0.1, skd=0.3)
    terms = distillation_loss(student, x, weights, teacher, generator=torch.Generator().manual_seed(0))
    expected = 0.9 * terms["nll"] + 0.2 * terms["lkd"] + 0.1 * terms["ilkd"] + 0.3 * terms["skd"]
    torch.testing.assert_close(terms["loss"], expected)
    with pytest.raises(ValueError, match="no teacher"):
        distillation_loss(student, x, weights)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    only_ilkd = LossWeights(nll=0.0, ilkd=1.0)
    first = None
    for _ in range(60):
        loss = distillation_loss(student, x, only_ilkd, teacher)["loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in teacher.parameters())


def tiny_digits():
    data = load_flow_data("digits")
    data.train, data.validate, data.test = data.train[:256], data.validate[:64], data.test[:64]
    data.labels = {k: v[:256] if k == "train" else v[:64] for k, v in data.labels.items()}
    return data


def test_training_improves_validation_nll_and_keeps_the_best_epoch():
    data = tiny_digits()
    torch.manual_seed(0)
    flow = Glow(image_shape=(1, 8, 8), levels=3, depth=1, hidden=16)
    args = FlowTrainingArguments(epochs=4, batch_size=64, learning_rate=3e-3)
    result = train_flow(flow, data, args)
    vals = [h["val_nll"] for h in result.history]
    assert vals[-1] < vals[0] and result.best_val_nll == min(vals) and not result.diverged
    assert not flow.training
    assert evaluate_nll(flow, data, "validate", seed=args.seed) == pytest.approx(result.best_val_nll, abs=1e-9)


def test_skd_divergence_is_reported_not_hidden():
    data = load_flow_data("breast_cancer")

    class ExplodingTeacher(MAF):
        def inverse(self, u):
            return super().inverse(u) * float("nan")

    torch.manual_seed(0)
    teacher, student = ExplodingTeacher(features=30, blocks=1, hidden=8), MAF(features=30, blocks=1, hidden=8)
    args = FlowTrainingArguments(epochs=3, batch_size=64, skd_warmup_epochs=1, max_bad_steps=2)
    result = train_flow(student, data, args, LossWeights(nll=0.9, skd=0.1), teacher)
    assert result.diverged and result.diverged_at.startswith("epoch 1") and result.skipped_steps == 3
    assert result.best_epoch == 0 and all(torch.isfinite(p).all() for p in student.parameters())


def test_data_sets():
    digits = load_flow_data("digits")
    assert digits.event_shape == (1, 8, 8) and digits.levels == 17
    assert len(digits.train) + len(digits.validate) + len(digits.test) == 1797
    assert digits.train.min() == 0 and digits.train.max() == 16
    x = digits.model_inputs(digits.train[:100], torch.Generator().manual_seed(0))
    assert x.min() >= -0.5 and x.max() < 0.5
    assert bits_per_dim(-math.log(17), 17) == pytest.approx(0.0)
    tab = load_flow_data("breast_cancer")
    assert tab.event_shape == (30,) and tab.levels is None
    torch.testing.assert_close(tab.train.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown data set"):
        load_flow_data("mnist")
    with pytest.raises(ValueError, match="data_root"):
        load_flow_data("power")


def test_frechet_distance_and_mmd():
    rng = np.random.RandomState(0)
    a = rng.randn(4000, 3)
    b = a + np.array([1.0, 2.0, 0.0])  # same covariance, shifted mean: FD = ‖Δμ‖² exactly
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(5.0, abs=1e-8)
    one = rng.randn(4000, 1)
    expected = (2 * one.mean()) ** 2 + 4 * one.var(ddof=1)  # (μ_a − μ_b)² + (σ_a − σ_b)²
    assert frechet_distance(one, 3 * one) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(rng.randn(4000, 2), rng.randn(4000, 2) * 2) == pytest.approx(2.0, abs=0.2)
    ta, tb = torch.tensor(a[:300]), torch.tensor(b[:300])
    same = mmd_rbf(ta, torch.tensor(a[300:600]))
    assert abs(same) < 0.02 and mmd_rbf(ta, tb) > 0.2


def test_sample_grid(tmp_path):
    path = tmp_path / "grid.png"
    save_sample_grid({"a": torch.rand(4, 1, 8, 8), "b": torch.rand(4, 1, 8, 8)}, str(path))
    assert path.stat().st_size > 1000


TINY = [
    "teacher={levels: 3, depth: 2, hidden: 8}",
    "student={levels: 3, depth: 1, hidden: 8}",
    "teacher_epochs=1",
    "student_epochs=1",
    "skd_warmup_epochs=0",
    "seeds=[0, 1]",
    "num_samples=64",
    "bootstrap_rounds=5",
    "feature_epochs=1",
    "batch_size=256",
]


def test_experiment_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "exp")
    config = load_experiment_config("recipes/flows/digits_glow.yaml", TINY + [f"output_dir={out}"])
    summary = run_experiment(config)
    models = [r["model"] for r in summary["records"]]
    assert models == ["teacher", "nll", "lkd", "ilkd", "skd"] * 2
    assert all(math.isfinite(r["bits_per_dim"]) and math.isfinite(r["fd"]) for r in summary["records"])
    for name in ("results.json", "table.md", "samples.png", "runs/ilkd_seed1/flow.json", "teacher_seed1/result.json"):
        assert os.path.exists(os.path.join(out, name))
    assert "| ilkd |" in open(os.path.join(out, "table.md")).read()
    ilkd = next(r for r in summary["records"] if r["model"] == "ilkd")
    assert ilkd["alignment"] == [[0, 1], [1, 3], [2, 5]]
    # interrupted run: one student lost; a rerun retrains exactly that one and reuses the rest
    import shutil

    shutil.rmtree(os.path.join(out, "runs", "lkd_seed1"))
    capsys.readouterr()
    again = run_experiment(config)
    log = capsys.readouterr().out
    assert log.count("reusing") == 9 and "\nlkd seed 1: reusing" not in log
    before = {(r["model"], r["seed"]): r["bits_per_dim"] for r in summary["records"]}
    after = {(r["model"], r["seed"]): r["bits_per_dim"] for r in again["records"]}
    assert before == after  # same seeds → the retrained run reproduces its numbers
    assert json.load(open(os.path.join(out, "results.json")))["records"] == again["records"]


def test_tabular_experiment_with_maf(tmp_path):
    out = str(tmp_path / "tab")
    config = load_experiment_config(
        "recipes/flows/breast_cancer_maf.yaml",
        [
            "teacher={blocks: 3, hidden: 16}",
            "student={blocks: 1, hidden: 16}",
            "teacher_epochs=2",
            "student_epochs=2",
            "seeds=[0]",
            "num_samples=64",
            "bootstrap_rounds=5",
            "skd_warmup_epochs=1",
            f"output_dir={out}",
        ],
    )
    summary = run_experiment(config)
    assert [r["model"] for r in summary["records"]] == ["teacher", "nll", "lkd", "ilkd", "skd"]
    assert all(math.isfinite(r["test_nll"]) for r in summary["records"])
    assert "FD (data space)" in summary["table"]


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown FlowExperimentConfig keys"):
        load_experiment_config(None, ["studnet_epochs=3"])
    with pytest.raises(ValueError, match="unknown dataset"):
        load_experiment_config(None, ["dataset=cifar"])
    with pytest.raises(ValueError, match="no entry in method_weights"):
        load_experiment_config(None, ["methods=[nll, fancy]"])
    with pytest.raises(ValueError, match="keys must be nll, lkd, ilkd, skd"):
        load_experiment_config(None, ["method_weights={x: {kd: 1}}"])
    with pytest.raises(ValueError, match="not key=value"):
        load_experiment_config(None, ["seeds"])
    for bad, message in [
        ("seeds=3", "list of ints"),
        ("max_grad_norm=0", "max_grad_norm"),
        ("alignment=every", "unknown alignment"),
        ("bootstrap_rounds=0", "bootstrap_rounds"),
        ("teacher_epochs=abc", "teacher_epochs"),
        ("skd_warmup_epochs=500", "never be applied"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_experiment_config(None, [bad])
    with pytest.raises(ValueError, match="not found"):
        load_experiment_config("recipes/flows/missing.yaml")


def test_cli_teacher_distill_evaluate(tmp_path, capsys):
    from fdistill.cli import main

    out = str(tmp_path / "cli")
    common = ["recipes/flows/digits_glow.yaml", *TINY, "seeds=[0]", f"output_dir={out}"]
    with pytest.raises(SystemExit):
        main(["flows", "distill", *common, "--method", "ilkd"])  # no teacher yet: one clear error
    assert "run `fdistill flows teacher" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "runs"))
    main(["flows", "teacher", common[0], "--seed", "0", *common[1:]])  # key=value also after an option
    main(["flows", "distill", *common, "--weights", "nll=0.5,ilkd=0.5"])
    record = json.load(open(os.path.join(out, "runs", "custom-nll0.5-ilkd0.5_seed0", "result.json")))
    assert record["weights"] == {"nll": 0.5, "lkd": 0.0, "ilkd": 0.5, "skd": 0.0}
    main(["flows", "distill", *common, "--weights", "nll=0.1,lkd=0.9"])  # another mix: its own run, not a reuse
    assert os.path.exists(os.path.join(out, "runs", "custom-nll0.1-lkd0.9_seed0", "result.json"))
    capsys.readouterr()
    main(["flows", "evaluate", *common, "--model", os.path.join(out, "runs", "custom-nll0.5-ilkd0.5_seed0")])
    metrics = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert metrics["bits_per_dim"] == pytest.approx(record["bits_per_dim"])


def test_maf_and_iaf_parallel_directions(monkeypatch):
    """MAF evaluates densities in one MADE pass per block and samples in D; IAF the other way round."""
    from fdistill.flows import transforms

    calls = {"n": 0}
    original = transforms.MADE.forward

    def counting(self, x):
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(transforms.MADE, "forward", counting)
    for cls, parallel in ((MAF, "forward"), (IAF, "inverse")):
        flow = cls(features=5, blocks=2, hidden=8).eval()
        counts = {}
        for direction, run in (
            ("forward", lambda flow=flow: flow(torch.randn(3, 5))),
            ("inverse", lambda flow=flow: flow.sample(3)),
        ):
            calls["n"] = 0
            run()
            counts[direction] = calls["n"]
        slow = "inverse" if parallel == "forward" else "forward"
        assert counts[parallel] == 2 and counts[slow] == 2 * (5 + 1), (cls.__name__, counts)


def test_bootstrap_interval_and_non_finite_cells():
    rng = np.random.RandomState(0)
    a, b = rng.randn(500, 2) + 1.0, rng.randn(500, 2)
    fd, low, high = bootstrap_frechet(a, b, rounds=50)
    assert 0 <= low < fd < high
    assert _mean_std([1.0, 3.0]) == "2.000 ± 1.414"
    assert _mean_std([1.0, float("nan")]) == "1.000 ± 0.000 (1 of 2 non-finite)"
    assert _mean_std([float("inf")]) == "—"


def test_resume_refuses_runs_trained_with_other_settings(tmp_path):
    out = str(tmp_path / "exp")
    base = TINY + ["seeds=[0]", "methods=[nll]", f"output_dir={out}"]
    run_experiment(load_experiment_config("recipes/flows/digits_glow.yaml", base))
    changed = load_experiment_config(
        "recipes/flows/digits_glow.yaml", base + ["student={levels: 3, depth: 1, hidden: 4}"]
    )
    with pytest.raises(ValueError, match="student differ"):
        run_experiment(changed)


@pytest.mark.parametrize(
    "override, message",
    [
        ("student={levels: 2, depth: 1, hidden: 8}", "same number of levels"),
        ("teacher={levles: 3}", "does not fit flow=glow"),
    ],
)
def test_bad_architectures_fail_before_anything_is_written(tmp_path, override, message):
    out = str(tmp_path / "never")
    with pytest.raises(ValueError, match=message):  # from the config (sizes, keys) or the preflight (alignment)
        run_experiment(load_experiment_config("recipes/flows/digits_glow.yaml", TINY + [override, f"output_dir={out}"]))
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "stage_file", ["digits_feature_net.pt", "digits_feature_net.safetensors", "teacher_seed0/flow.safetensors"]
)
def test_crafted_pickle_in_the_output_folder_is_never_run(tmp_path, crafted_pickle, stage_file):
    """Resume reads JSON + safetensors only: a pickle where a stage file is expected is an error, never executed."""
    from fdistill.flows.checks import StageFileError

    out, marker = tmp_path / "exp", tmp_path / "marker"
    config = load_experiment_config(
        "recipes/flows/digits_glow.yaml", TINY + ["seeds=[0]", "methods=[nll]", f"output_dir={out}"]
    )
    (out / "teacher_seed0").mkdir(parents=True)
    crafted_pickle(out / stage_file, marker)
    if stage_file == "digits_feature_net.safetensors":  # a complete-looking stage whose tensors are a pickle
        settings = {"dataset": "digits", "split_seed": 0, "feature_epochs": 1}
        json.dump({"settings": settings, "accuracy": 1.0}, open(out / "digits_feature_net.json", "w"))
    if stage_file.startswith("teacher_seed0"):
        json.dump(
            {"kind": "glow", "config": {"image_shape": [1, 8, 8], "levels": 3, "depth": 2, "hidden": 8}},
            open(out / "teacher_seed0" / "flow.json", "w"),
        )
        json.dump({"settings": config.run_settings("teacher")}, open(out / "teacher_seed0" / "result.json", "w"))
    with pytest.raises(StageFileError, match="(?i)delete") as error:
        run_experiment(config, log=lambda *_: None)
    assert not marker.exists()
    assert os.path.dirname(stage_file) in str(error.value) or stage_file in str(error.value)
    assert not (out / "results.json").exists()


def test_a_run_whose_steps_are_all_non_finite_is_an_error_not_a_result(tmp_path, monkeypatch):
    from fdistill.flows import training

    data = tiny_digits()
    nan_loss = lambda flow, x, *args: {"loss": flow(x).log_prob.mean() * float("nan")}  # noqa: E731
    monkeypatch.setattr(training, "distillation_loss", nan_loss)
    flow = Glow(image_shape=(1, 8, 8), levels=3, depth=1, hidden=8)
    with pytest.raises(
        ValueError,
        match=r"training teacher seed 0 failed: .*4 of 4 optimiser steps skipped.*"
        r"learning_rate=0.001",
    ):
        train_flow(flow, data, FlowTrainingArguments(epochs=1, batch_size=64), name="teacher seed 0")
    out = tmp_path / "exp"
    config = load_experiment_config(
        "recipes/flows/digits_glow.yaml", TINY + ["seeds=[0]", "methods=[nll]", f"output_dir={out}"]
    )
    with pytest.raises(ValueError, match="training teacher seed 0 failed"):
        run_experiment(config, log=lambda *_: None)
    assert not (out / "teacher_seed0").exists() and not (out / "results.json").exists()  # nothing saved as finished


@pytest.mark.parametrize(
    "override, message",
    [
        ("teacher={levels: 3, depth: 2, hidden: -1}", "teacher.hidden=-1 must be ≥ 1"),
        ("student={levels: 0, depth: 1, hidden: 8}", "student.levels=0 must be ≥ 1"),
        ("teacher={levels: 3, depth: [2, 0, 2], hidden: 8}", "teacher.depth"),
        ("teacher={levels: 3, depth: 2, hidden: 8, features: 64}", "come from the data set"),
        ("teacher=3", "teacher"),
        ("learning_rate=[1, 2]", "learning_rate"),
        ("learning_rate=.nan", "learning_rate"),
        ("learning_rate=-1", "learning_rate"),
        ("methods=[]", "non-empty"),
        ("methods=[nll, nll]", "repeats"),
        ("seeds=[]", "non-empty list"),
        ("seeds=[0, 0]", "repeats"),
        ("seeds=[-1]", "≥ 0"),
        ("batch_size=0", "batch_size"),
        ("student_epochs=0", "student_epochs"),
        ("num_samples=1", "num_samples"),
        ("output_dir=README.md", "existing file"),
        ("method_weights={x: {nll: abc}}", "loss weight nll"),
        ("method_weights={x: {nll: .inf}}", "loss weight nll"),
        ("sample_temperature=0", "sample_temperature"),
    ],
)
def test_bad_settings_are_one_clear_error_before_any_work(override, message):
    with pytest.raises(ValueError, match=message):
        load_experiment_config("recipes/flows/digits_glow.yaml", TINY + [override])


def test_maf_sizes_are_checked_for_the_flow_kind():
    with pytest.raises(ValueError, match="teacher.blocks=-1 must be ≥ 1"):
        load_experiment_config("recipes/flows/breast_cancer_maf.yaml", ["teacher={blocks: -1, hidden: 16}"])
    from fdistill.flows import build_flow

    with pytest.raises(ValueError, match="flow.hidden"):
        build_flow("maf", features=3, blocks=1, hidden=[8, 0])


def test_cli_worst_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    from fdistill.cli import main

    out = str(tmp_path / "cli")
    common = ["recipes/flows/digits_glow.yaml", *TINY, "seeds=[0]", f"output_dir={out}"]
    for argv, message in [
        (["flows", "distill", *common, "--weights", "nll=abc"], "--weights item='nll=abc'"),
        (["flows", "distill", *common, "--weights", "nll=0.5,kd=0.5"], "--weights item='kd=0.5'"),
        (["flows", "teacher", *common, "--seed", "-1"], "--seed=-1"),
        (["flows", "experiment", *common, "teacher={levels: 3, depth: 2, hidden: 8, blocks: -1}"], "does not fit"),
        (["flows", "experiment", *common, "output_dir=README.md"], "existing file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err, (argv, err)
    assert not os.path.exists(out)
