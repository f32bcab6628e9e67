"""fdistill.diffusion: the DDIM map and its inverse, every loss at its target, DSM/VSD against closed-form Gaussian
scores, the exact denoiser of a point mass, then every method end to end on tiny settings with resume."""

import json
import math
import os

import pytest
import torch

from fdistill.diffusion import ddim_step, progressive_target
from fdistill.diffusion import experiment as ex
from fdistill.diffusion.ddim import ddim_sample
from fdistill.diffusion.losses import (
    denoising_loss,
    dmd_direction,
    dsm_loss,
    eps_from_v,
    guidance_loss,
    guided_prediction,
    kd_loss,
    pd_loss,
    pd_weight,
    score_from_x0,
    v_target,
    vsd_direction,
    vsd_generator_loss,
    x0_from_v,
)
from fdistill.diffusion.schedule import CLEAN, NoiseSchedule
from fdistill.errors import InputError, NonFiniteError

SCHEDULE = NoiseSchedule(1000)


def _times(batch, generator, low=0):
    """Random pairs s > t (t may be CLEAN) and their α, σ as [B, 1] float64."""
    s = torch.randint(low + 1, 1000, (batch,), generator=generator)
    t = (torch.rand(batch, generator=generator, dtype=torch.float64) * (s + 1)).long() - 1  # −1 ≤ t < s
    a_s, s_s = SCHEDULE.alpha_sigma(s, like=torch.zeros(batch, 1, dtype=torch.float64))
    a_t, s_t = SCHEDULE.alpha_sigma(t, like=torch.zeros(batch, 1, dtype=torch.float64))
    return s, t, a_s, s_s, a_t, s_t


def test_schedule_zero_terminal_snr_trailing_grids_nest():
    a, s = SCHEDULE.alpha_sigma(torch.tensor([999, 0, CLEAN]))
    assert a[0] == 0 and s[0] == 1 and a[2] == 1 and s[2] == 0
    torch.testing.assert_close(a**2 + s**2, torch.ones(3))
    for k in (1, 2, 4, 8, 16, 32):
        coarse, fine = SCHEDULE.trailing_timesteps(k), SCHEDULE.trailing_timesteps(2 * k)
        assert coarse[0] == 999 and fine[::2] == coarse and len(set(fine)) == 2 * k
    assert SCHEDULE.step_pairs(2) == [(999, 499), (499, CLEAN)]


def test_ddim_of_progressive_target_is_the_target_point():
    g = torch.Generator().manual_seed(0)
    _, _, a_s, s_s, a_t, s_t = _times(64, g)
    x_s, x_t = (
        torch.randn(64, 5, generator=g, dtype=torch.float64),
        torch.randn(64, 5, generator=g, dtype=torch.float64),
    )
    x_tilde = progressive_target(x_s, x_t, a_s, s_s, a_t, s_t)
    torch.testing.assert_close(ddim_step(x_s, x_tilde, a_s, s_s, a_t, s_t), x_t, rtol=1e-9, atol=1e-9)
    # and DDIM written as the lecture writes it: (β_t/β_s)·x_s + α_s(α_t/α_s − β_t/β_s)·x̂₀ (for α_s > 0)
    x0 = torch.randn(64, 5, generator=g, dtype=torch.float64)
    lecture = s_t / s_s * x_s + a_s * (a_t / a_s - s_t / s_s) * x0
    keep = a_s.squeeze(1) > 1e-3
    torch.testing.assert_close(ddim_step(x_s, x0, a_s, s_s, a_t, s_t)[keep], lecture[keep])


@pytest.mark.parametrize("steps", [1, 2, 3, 8, 64])
def test_ddim_with_the_exact_denoiser_of_a_point_mass_lands_on_it(steps):
    point = torch.tensor([[0.7, -1.3, 2.0]], dtype=torch.float64)
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seen = []

    def denoise(x, t):  # E[x_0 | x_t] of a point mass is the point, for every x_t and t
        a, s = SCHEDULE.alpha_sigma(t, like=x)
        seen.append(torch.allclose(x, a * point + s * noise))  # the ODE keeps ε fixed: x_t = α_t·x* + σ_t·ε
        return point.expand_as(x)

    out = ddim_sample(denoise, noise, SCHEDULE, steps)
    torch.testing.assert_close(out, point.expand_as(out), rtol=0, atol=1e-12)
    assert len(seen) == steps and all(seen)


def test_v_parameterisation_round_trip_and_score():
    g = torch.Generator().manual_seed(2)
    _, _, a, sg, _, _ = _times(32, g, low=10)
    x0, eps = torch.randn(32, 4, generator=g, dtype=torch.float64), torch.randn(32, 4, generator=g, dtype=torch.float64)
    x_t, v = a * x0 + sg * eps, v_target(x0, eps, a, sg)
    torch.testing.assert_close(x0_from_v(x_t, v, a, sg), x0)
    torch.testing.assert_close(eps_from_v(x_t, v, a, sg), eps)
    torch.testing.assert_close(score_from_x0(x_t, x0, a, sg), -eps / sg)


def test_each_loss_is_exactly_zero_at_its_target_and_positive_off_it():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 1, 4, 4, generator=g)
    assert kd_loss(x, x.clone()) == 0 and kd_loss(x + 0.1, x) > 0
    # PD: a student whose one DDIM step equals the teacher's two steps s → u → t
    _, _, a_s, s_s, a_t, s_t = _times(8, g, low=2)
    a_s, s_s, a_t, s_t = (v.float().reshape(8, 1, 1, 1) for v in (a_s, s_s, a_t, s_t))
    a_u, s_u = (a_s + a_t) / 2, None
    s_u = (1 - a_u**2).sqrt()

    def teacher(z):  # any denoiser: x̂₀(z) = tanh(z)
        return torch.tanh(z)

    x_u = ddim_step(x, teacher(x), a_s, s_s, a_u, s_u)
    x_t = ddim_step(x_u, teacher(x_u), a_u, s_u, a_t, s_t)
    student = progressive_target(x, x_t, a_s, s_s, a_t, s_t)
    w = pd_weight(a_s, s_s)
    assert pd_loss(student, x, x_t, a_s, s_s, a_t, s_t, w) == 0
    assert pd_loss(teacher(x), x, x_t, a_s, s_s, a_t, s_t, w) > 0  # one teacher step is not two
    # guidance: the guided teacher's two calls, and w = 0 is the conditional model
    cond, uncond, wg = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g), torch.rand(8, 1, generator=g)
    assert guidance_loss(guided_prediction(cond, uncond, wg), cond, uncond, wg) == 0
    assert guidance_loss(cond, cond, uncond, wg) > 0
    assert torch.equal(guided_prediction(cond, uncond, 0.0), cond)
    # VSD/DMD: no update when the fake score equals the teacher's
    score = torch.randn(8, 3, generator=g)
    direction = vsd_direction(score, score.clone(), torch.rand(8, 1, generator=g), 1.0)
    gen = torch.randn(8, 3, generator=g, requires_grad=True)
    loss = vsd_generator_loss(gen, direction)
    loss.backward()
    assert loss == 0 and torch.count_nonzero(gen.grad) == 0
    assert torch.count_nonzero(dmd_direction(cond, cond.clone(), uncond)) == 0
    assert pd_weight(torch.tensor([1.0, 0.1]), torch.tensor([0.1, 1.0])).tolist() == pytest.approx([100.0, 1.0])


def test_denoising_loss_is_dsm_weighted_by_sigma2_over_alpha2():
    g = torch.Generator().manual_seed(4)
    _, _, a, s, _, _ = _times(16, g, low=5)
    x0, eps, v_hat = (torch.randn(16, 3, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = a * x0 + s * eps
    score = score_from_x0(x_t, x0_from_v(x_t, v_hat, a, s), a, s)
    per = torch.stack(
        [denoising_loss(v_hat[i : i + 1], x0[i : i + 1], eps[i : i + 1], a[i : i + 1], s[i : i + 1]) for i in range(16)]
    )
    dsm = torch.stack(
        [dsm_loss(score[i : i + 1], x_t[i : i + 1], x0[i : i + 1], a[i : i + 1], s[i : i + 1]) for i in range(16)]
    )
    torch.testing.assert_close(per, dsm * (s / a).squeeze(1) ** 2)


def test_dsm_minimiser_is_the_closed_form_gaussian_score():
    """Data N(m, τ²): p_t = N(α·m, α²τ² + σ²). Fitting a linear score a·x + b by DSM (least squares) recovers
    a = −1/v, b = α·m/v, v = α²τ² + σ²."""
    g = torch.Generator().manual_seed(5)
    m, tau, alpha = 1.5, 0.5, 0.6
    sigma = math.sqrt(1 - alpha**2)
    x0 = m + tau * torch.randn(200_000, generator=g, dtype=torch.float64)
    x_t = alpha * x0 + sigma * torch.randn(200_000, generator=g, dtype=torch.float64)
    design = torch.stack([x_t, torch.ones_like(x_t)], 1)
    target = -(x_t - alpha * x0) / sigma**2  # DSM regresses the score onto this
    coef = torch.linalg.lstsq(design, target.unsqueeze(1)).solution.squeeze(1)
    v = alpha**2 * tau**2 + sigma**2
    assert coef.tolist() == pytest.approx([-1 / v, alpha * m / v], abs=0.01)
    # and the closed-form score has a smaller DSM loss than a perturbed one
    exact = (-(x_t - alpha * m) / v).unsqueeze(1)
    args = (x_t.unsqueeze(1), x0.unsqueeze(1), alpha, sigma)
    assert dsm_loss(exact, *args) < dsm_loss(exact + 0.05, *args) and dsm_loss(exact, *args) < dsm_loss(
        exact * 1.05, *args
    )


def test_vsd_generator_gradient_is_the_closed_form_score_difference():
    """Generator G(z) = μ + τ·z, data N(m, τ²I): with exact scores the VSD surrogate's gradient on μ equals
    ω·α·(s_θ − s)(x̂_t) = ω·α²(μ − m)/v for every sample, which is ∇_μ ω·KL(p_t^θ ‖ p_t)."""
    g = torch.Generator().manual_seed(6)
    m, tau = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.7
    mu = torch.tensor([0.2, 0.5], dtype=torch.float64, requires_grad=True)
    t = torch.randint(1, 999, (256,), generator=g)
    alpha, sigma = SCHEDULE.alpha_sigma(t, like=torch.zeros(256, 1, dtype=torch.float64))
    omega = torch.rand(256, 1, generator=g, dtype=torch.float64)
    x0 = mu + tau * torch.randn(256, 2, generator=g, dtype=torch.float64)
    x_t = alpha * x0 + sigma * torch.randn(256, 2, generator=g, dtype=torch.float64)
    v = alpha**2 * tau**2 + sigma**2
    s_student, s_teacher = -(x_t - alpha * mu) / v, -(x_t - alpha * m) / v
    direction = vsd_direction(s_student.detach(), s_teacher, alpha, omega)
    vsd_generator_loss(x0, direction).backward()
    kl = (omega * alpha**2 * ((mu - m) ** 2) / (2 * v)).sum(1).mean()  # KL of equal-variance Gaussians, weighted
    expected = torch.autograd.grad(kl, mu)[0]
    torch.testing.assert_close(mu.grad, expected)
    torch.testing.assert_close(direction, (omega * alpha**2 * (mu - m) / v).detach().expand(256, 2))


def test_dmd_direction_is_vsd_with_its_normalising_weight():
    g = torch.Generator().manual_seed(7)
    _, _, a, s, _, _ = _times(16, g, low=5)
    x_t, gen, fake, real = (torch.randn(16, 3, generator=g, dtype=torch.float64) for _ in range(4))
    norm = (gen - real).abs().mean(1, keepdim=True)
    omega = s**2 / (a**2 * norm)
    direct = vsd_direction(score_from_x0(x_t, fake, a, s), score_from_x0(x_t, real, a, s), a, omega)
    torch.testing.assert_close(dmd_direction(fake, real, gen), direct)


# ---------------------------------------------------------------- methods end to end, resume, CLI, bad input

TINY = [
    "student_classes=unconditional",
    "teacher_steps=40",
    "kd_steps=4",
    "num_pairs=24",
    "pairs_shard_size=10",
    "pd_start_steps=4",
    "pd_steps_per_round=3",
    "vsd_steps=3",
    "guidance_steps=3",
    "eval_steps=[4,2,1]",
    "num_eval_samples=40",
    "seeds=[0,1]",
    "kd_teacher_steps=4",
    "batch_size=16",
    "hidden=16",
    "depth=1",
    "toy_train_size=64",
]
DIGITS = [
    "dataset=digits",
    "channels=[8,16]",
    "teacher_steps=3",
    "feature_epochs=1",
    "seeds=[0]",
    "num_eval_samples=20",
    "pd_start_steps=2",
    "eval_steps=[2,1]",
    "kd_teacher_steps=2",
    "num_pairs=8",
    "pairs_shard_size=8",
    "kd_steps=2",
    "pd_steps_per_round=2",
    "vsd_steps=2",
    "guidance_steps=2",
    "batch_size=8",
]


def _config(tmp_path, extra=()):
    return ex.load_experiment_config(None, [f"output_dir={tmp_path}/run", *TINY, *extra])


def _no_training(monkeypatch):
    for name in ("train_teacher", "distill_kd", "distill_pd_round", "distill_vsd", "distill_guidance"):
        monkeypatch.setattr(ex.methods, name, lambda *a, **k: pytest.fail("a finished stage was trained again"))


def test_toy_experiment_every_method_end_to_end_then_resumes_without_training(tmp_path, monkeypatch):
    config = _config(tmp_path)
    result = ex.run_experiment(config, log=None)
    samplers = {(r["model"], r["steps"]) for r in result["rows"]}
    expected = (
        {("teacher", k) for k in (4, 2, 1)}
        | {("guided teacher", k) for k in (4, 2, 1)}
        | {("kd", 1), ("vsd", 1), ("dmd", 1), ("pd", 2), ("pd", 1), ("guidance", 4), ("guidance", 2), ("guidance", 1)}
    )
    assert samplers == expected and len(result["rows"]) == 2 * len(expected)
    for row in result["rows"]:
        assert all(math.isfinite(row[k]) for k in ("log_likelihood", "energy_distance", "mse_to_teacher"))
        assert row["nfe"] == (2 * row["steps"] if row["model"] == "guided teacher" else row["steps"])
    top = [r for r in result["rows"] if r["model"] == "teacher" and r["steps"] == 4]
    assert all(r["mse_to_teacher"] == 0 for r in top)  # the reference is the teacher's own top-step output
    table = (tmp_path / "run" / "table.md").read_text()
    assert "| pd | 1 | 1 |" in table and "claims" in table and " ± " in table
    assert all(os.path.exists(p) for p in result["plots"])
    assert len(os.listdir(f"{tmp_path}/run/pairs")) == 1 + 3  # provenance + 3 shards of ≤ 10 pairs
    _no_training(monkeypatch)
    again = ex.run_experiment(config, log=None)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]

    assert strip(again["rows"]) == strip(result["rows"])


def test_a_stage_made_with_other_settings_is_refused_before_any_training(tmp_path, monkeypatch):
    ex.run_experiment(_config(tmp_path, ["methods=[kd]", "seeds=[0]"]), log=None)
    _no_training(monkeypatch)
    with pytest.raises(InputError, match="other settings.*learning_rate"):
        ex.run_experiment(_config(tmp_path, ["methods=[kd]", "seeds=[0]", "learning_rate=0.01"]), log=None)
    with pytest.raises(InputError, match="pairs made with other settings.*kd_teacher_steps"):
        ex.run_experiment(_config(tmp_path, ["methods=[kd]", "seeds=[0]", "kd_teacher_steps=8"]), log=None)


def test_pairs_are_a_resumable_datasets_dataset(tmp_path):
    from datasets import load_from_disk

    from fdistill.diffusion.pairs import build_pairs

    calls = []

    def make(index, count):
        calls.append(index)
        g = torch.Generator().manual_seed(index)
        return {
            "noise": torch.randn(count, 2, generator=g),
            "label": torch.zeros(count, dtype=torch.long),
            "target": torch.randn(count, 2, generator=g),
        }

    prov = {"sample_shape": [2], "teacher": "x"}
    first = build_pairs(str(tmp_path), prov, 25, 10, make, log=None)
    assert calls == [0, 1, 2] and first["noise"].shape == (25, 2)
    assert len(load_from_disk(str(tmp_path / "shard_00001"))) == 10
    import shutil

    shutil.rmtree(tmp_path / "shard_00001")  # an interrupted run: only the missing shard is sampled again
    again = build_pairs(str(tmp_path), prov, 25, 10, make, log=None)
    assert calls == [0, 1, 2, 1] and torch.equal(again["target"], first["target"])
    with pytest.raises(InputError, match="other settings \\(teacher differ"):
        build_pairs(str(tmp_path), {**prov, "teacher": "y"}, 25, 10, make, log=None)


def test_digits_unet_teacher_and_every_method_end_to_end(tmp_path):
    config = ex.load_experiment_config(None, [f"output_dir={tmp_path}/d", *DIGITS])
    result = ex.run_experiment(config, log=None)
    models = {(r["model"], r["steps"]) for r in result["rows"]}
    assert {("kd", 1), ("pd", 1), ("vsd", 1), ("dmd", 1), ("guidance", 2), ("guidance", 1)} <= models
    assert all(math.isfinite(r["digits_fd"]) and 0 <= r["class_accuracy"] <= 1 for r in result["rows"])
    assert (
        math.isfinite(result["floor"]["digits_fd"])
        and "Real-vs-real floor" in (tmp_path / "d" / "table.md").read_text()
    )


def test_a_diverging_teacher_is_an_error_naming_the_stage(tmp_path, monkeypatch):
    config = _config(tmp_path, ["methods=[kd]", "seeds=[0]"])
    problem = ex.Problem(config)
    problem.train_x[:] = float("nan")  # every loss non-finite: every step skipped
    with pytest.raises(NonFiniteError, match="'teacher' diverged: 40 of 40"):
        ex.get_teacher(config, problem, log=None)
    assert not os.path.exists(f"{tmp_path}/run/teacher.json")  # nothing saved as finished


@pytest.mark.parametrize(
    "override, match",
    [
        ("pd_start_steps=6", "power of two"),
        ("methods=[kd, cm]", "unknown methods"),
        ("batch_size=0", "batch_size"),
        ("dataset=cifar", "dataset"),
        ("eval_steps=[]", "eval_steps"),
        ("guidance_weight=9", "guidance_w_max"),
        ("learning_rate=nan", "learning_rate"),
        ("label_dropout=0", "unconditional"),
        ("num_train_timesteps=1001", "divisible"),
        ("seeds=[0, 0]", "repeats"),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path, override, match):
    with pytest.raises(InputError, match=match):
        _config(tmp_path, [override])


def test_cli_commands_and_their_errors(tmp_path, capsys):
    from fdistill.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "\n".join(x.replace("=", ": ", 1) for x in TINY + ["methods: [pd]", "seeds: [0]"])
        + f"\noutput_dir: {tmp_path}/c\n"
    )
    for argv, text in [
        (["distill", str(recipe), "--method", "cm"], "--method='cm'"),
        (["sample", str(recipe), "--model", "pd", "--steps", "3", "--out", str(tmp_path / "s")], "--steps=3"),
        (["sample", str(recipe), "--model", "teacher", "--out", str(tmp_path / "s")], "does not exist"),
        (["teacher", str(recipe), "pd_start_steps=3"], "power of two"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["diffusion", *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and text in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "c" / "teacher.json") and not os.path.exists(tmp_path / "s")
    main(["diffusion", "teacher", str(recipe)])
    main(["diffusion", "distill", str(recipe), "--method", "pd", "--seed", "0"])
    capsys.readouterr()
    main(
        [
            "diffusion",
            "sample",
            str(recipe),
            "--model",
            "pd",
            "--steps",
            "1",
            "--num",
            "5",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert meta["nfe_per_sample"] == 1 and os.path.exists(tmp_path / "s" / "samples.safetensors")
    main(["diffusion", "evaluate", str(recipe), "--seed", "0"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {(r["model"], r["steps"]) for r in rows} >= {("pd", 2), ("pd", 1), ("teacher", 4)}


def test_recipes_load_and_are_consistent():
    from pathlib import Path

    recipes = sorted(Path(__file__).resolve().parents[2].joinpath("recipes", "diffusion").rglob("*.yaml"))
    assert {p.stem for p in recipes} >= {"toy2d", "digits"}
    for path in recipes:
        config = ex.load_experiment_config(str(path))
        assert len(config.seeds) >= 3 and set(config.methods) == set(ex.METHODS)
        assert path.read_text().startswith(f"# fdistill diffusion experiment {path.relative_to(path.parents[2])}")
