"""The Gaussian study (fdistill.vocoder.gaussian): exact densities and inverses, losses that vanish at student =
teacher, the path-derivative signal, Proposition 1 (Imhof) against closed forms and Monte Carlo, training, the CLI."""

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal, kl_divergence

from fdistill.cli import main
from fdistill.errors import InputError
from fdistill.vocoder import (
    TriangularGaussian,
    expansion_signal,
    gaussian_kl,
    make_teacher,
    proposition1_monte_carlo,
    proposition1_probability,
    relative_eigenvalues,
    reverse_kl_loss,
    run_gaussian_study,
    sample_gradient,
    train_student,
    x_reconstruction_loss,
    z_reconstruction_loss,
)
from fdistill.vocoder.gaussian import METHODS, FullGaussian, covariance_eigenvalues, over_repeats, seeded_generator

F64 = torch.float64


def random_student(dim: int, seed: int) -> TriangularGaussian:
    g = torch.Generator().manual_seed(seed)
    student = TriangularGaussian(dim)
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    return student


def normal(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_log_prob_and_kl_match_torch_distributions():
    student, teacher = random_student(5, 0), make_teacher(5, seeded_generator(1))
    mvn_s = MultivariateNormal(student.mean.detach(), scale_tril=student.scale_tril().detach())
    mvn_t = MultivariateNormal(teacher.mean, covariance_matrix=teacher.covariance())
    x = student.sample(normal(7, 5, 2)).detach()
    torch.testing.assert_close(student.log_prob(x), mvn_s.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(teacher.log_prob(x), mvn_t.log_prob(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gaussian_kl(student, teacher), kl_divergence(mvn_s, mvn_t), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gaussian_kl(teacher, student), kl_divergence(mvn_t, mvn_s), rtol=1e-10, atol=1e-10)


def test_inverse_of_sample_and_change_of_variables():
    student = random_student(6, 3)
    z = normal(9, 6, 4)
    x = student.sample(z)
    torch.testing.assert_close(student.inverse(x), z, rtol=0, atol=1e-12)
    torch.testing.assert_close(student.log_prob_of_latent(z), student.log_prob(x), rtol=0, atol=1e-12)
    # x_t depends on z_≤t only (IAF structure): the Jacobian is lower-triangular
    jac = torch.autograd.functional.jacobian(lambda v: student.sample(v[None])[0], z[0])
    assert torch.equal(jac, torch.tril(jac)) and bool((torch.diagonal(jac) > 0).all())


def test_teacher_is_the_papers_distribution():
    g = seeded_generator(5)
    teacher = make_teacher(8, g)
    r = torch.randn(8, 8, generator=seeded_generator(5), dtype=F64)  # the R make_teacher drew
    torch.testing.assert_close(teacher.covariance(), r @ r.T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(teacher.mean, torch.full((8,), 2.0, dtype=F64))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_every_loss_vanishes_when_student_equals_teacher():
    teacher = make_teacher(6, seeded_generator(6))
    student = TriangularGaussian(6)
    student.load_state_dict(teacher.state_dict())
    z = normal(256, 6, 7)
    x = teacher.sample(normal(256, 6, 8))
    per_sample = student.log_prob_of_latent(z) - teacher.log_prob(student.sample(z))
    assert per_sample.abs().max() < 1e-10  # the MC reverse-KL integrand is 0 sample by sample, not only on average
    assert abs(reverse_kl_loss(student, teacher, z).item()) < 1e-10
    for kind in ("l2", "l1"):
        assert z_reconstruction_loss(student, teacher, z, kind).item() < 1e-10
        assert x_reconstruction_loss(student, teacher, x, kind).item() < 1e-10
    assert abs(gaussian_kl(student, teacher).item()) < 1e-10
    # …and none of them vanishes for a different student
    other = random_student(6, 9)
    assert z_reconstruction_loss(other, teacher, z).item() > 1e-2
    assert x_reconstruction_loss(other, teacher, x).item() > 1e-2
    assert reverse_kl_loss(other, teacher, z).item() > 1e-2


def test_monte_carlo_reverse_kl_is_unbiased():
    teacher, student = make_teacher(4, seeded_generator(10)), random_student(4, 11)
    z = normal(200_000, 4, 12)
    with torch.no_grad():
        terms = student.log_prob_of_latent(z) - teacher.log_prob(student.sample(z))
    stderr = terms.std().item() / math.sqrt(len(terms))
    assert abs(terms.mean().item() - gaussian_kl(student, teacher).item()) < 4 * stderr


def test_sample_gradient_is_the_closed_form_path_signal():
    teacher, student = make_teacher(5, seeded_generator(13)), random_student(5, 14)
    x = student.sample(normal(10, 5, 15)).detach()
    expected = (
        -torch.linalg.solve(teacher.covariance(), (x - teacher.mean).T).T
        + torch.linalg.solve(student.covariance(), (x - student.mean).T).T
    ).detach()
    torch.testing.assert_close(sample_gradient(student, teacher, x), expected, rtol=1e-9, atol=1e-9)
    assert all(p.grad is None for p in student.parameters())  # the student's parameters are held fixed


def test_proposition1_formula_matches_closed_forms():
    # two weights ρ = (a, −b): P(a x₁² > b x₂²) = (2/π)·arctan√(a/b)
    for d2 in ([4.0, 0.25], [1.5, 0.01], [100.0, 0.9]):
        a, b = 1 - 1 / d2[0], 1 / d2[1] - 1
        assert proposition1_probability(d2) == pytest.approx(2 / math.pi * math.atan(math.sqrt(a / b)), abs=1e-9)
    # k weights +c, m weights −c: P(χ²_k > χ²_m) = P(Beta(k/2, m/2) > ½)
    d2 = [2.0] * 3 + [2.0 / 3.0] * 5  # ρ = ½ and −½
    assert proposition1_probability(d2) == pytest.approx(stats.beta.sf(0.5, 1.5, 2.5), abs=1e-9)
    assert proposition1_probability([2.0, 3.0]) == 1.0 and proposition1_probability([0.5, 1.0]) == 0.0
    # eigenvalues spread over many decades (a near-singular teacher) stay accurate
    d2 = np.r_[1e-6, np.linspace(1.5, 50, 20)]
    weights = np.sort(np.abs(1 - 1 / d2))
    assert 0 < proposition1_probability(d2) < 1 and weights[-1] / weights[0] > 1e5


@pytest.mark.parametrize("eigenvalues", [[0.1, 0.5, 2.0, 3.0], "wishart16"])
def test_proposition1_analytic_agrees_with_monte_carlo(eigenvalues):
    if eigenvalues == "wishart16":  # the teacher covariance RRᵀ of the study, seen from N(μ, I)
        eigenvalues = relative_eigenvalues(TriangularGaussian(16), make_teacher(16, seeded_generator(16))).tolist()
    analytic = proposition1_probability(eigenvalues)
    mc, stderr = proposition1_monte_carlo(eigenvalues, 100_000, seeded_generator(17))
    assert 0.02 < analytic < 0.98
    assert abs(mc - analytic) < 4 * stderr


def test_expansion_signal_is_rare_for_a_collapsed_student_only_when_the_teacher_is_thin():
    # a student inside a round teacher always gets pushed outwards; inside a thin one, mostly inwards
    dim = 8
    round_teacher = TriangularGaussian.from_scale_tril(torch.zeros(dim, dtype=F64), 3 * torch.eye(dim, dtype=F64))
    thin = torch.tensor([3.0] * 2 + [0.3] * 6, dtype=F64)
    thin_teacher = TriangularGaussian.from_scale_tril(torch.zeros(dim, dtype=F64), torch.diag(thin))
    student = TriangularGaussian(dim).requires_grad_(False)  # N(0, I)
    z = normal(20_000, dim, 18)
    assert expansion_signal(student, round_teacher, z).all()
    p_thin = expansion_signal(student, thin_teacher, z).double().mean().item()
    assert p_thin == pytest.approx(proposition1_probability(thin.pow(2).tolist()), abs=0.015) and p_thin < 0.05


def test_reverse_kl_and_x_reconstruction_training_reduce_the_kl():
    for dim in (3, 6):
        teacher = make_teacher(dim, seeded_generator(20, dim))
        for method in ("reverse_kl", "x_rec"):
            student, record = train_student(
                teacher,
                method,
                steps=300,
                batch=64,
                lr=0.05,
                generator=seeded_generator(21),
                probe_generator=seeded_generator(22),
                probe_samples=32,
            )
            kl = record["kl"]
            assert kl[-1] < 0.1 * kl[0] and record["kl_steps"][-1] == 300
            assert gaussian_kl(student, teacher).item() == pytest.approx(kl[-1])
            fractions = np.array(record["expansion"]) * 32  # one probe estimate per update + the final state
            assert len(fractions) == 301 and np.allclose(fractions, fractions.round()) and 0 <= fractions.min()


def without_timings(tree):
    if isinstance(tree, dict):
        return {k: without_timings(v) for k, v in tree.items() if k != "wall_seconds"}
    return [without_timings(v) for v in tree] if isinstance(tree, list) else tree


def test_study_is_deterministic_and_cli_writes_every_file(tmp_path):
    tiny = [
        "--dims",
        "2",
        "5",
        "--steps",
        "60",
        "--repeats",
        "2",
        "--samples",
        "16",
        "--eval-samples",
        "100",
        "--prop1-samples",
        "4000",
        "--seed",
        "3",
    ]
    main(["vocoder", "gaussian", "--out", str(tmp_path / "cli"), *tiny])
    for name in (
        "figure2_loglik_histograms.png",
        "figure3_expansion_signal.png",
        "proposition1.png",
        "kl_vs_teacher_min_eigenvalue.png",
        "table.md",
        "summary.json",
    ):
        assert (tmp_path / "cli" / name).stat().st_size > 500
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert set(summary["dims"]) == {"2", "5"} and summary["settings"]["steps"] == 60
    entry = summary["dims"]["5"]
    assert summary["settings"]["parameterisation"] == "triangular" and len(entry["repeats"]) == 2
    for row in entry["repeats"]:  # every method trained on every repeat's teacher
        assert set(row["methods"]) == {"reverse_kl", "z_rec", "x_rec"}
        assert row["methods"]["reverse_kl"]["kl_student_teacher"] > 0
    assert len(entry["expansion"]["curve"]["steps"]) == len(entry["expansion"]["curve"]["probability"])
    prop = entry["proposition1"]["teacher_vs_standard_student"]
    assert len(prop["per_repeat"]) == 2 and {"analytic", "monte_carlo", "z_score"} <= set(prop["per_repeat"][0])
    assert "expansion_end_decreases_with_dim" in summary["trends"]
    again = run_gaussian_study(
        str(tmp_path / "api"),
        dims=(2, 5),
        steps=60,
        repeats=2,
        samples=16,
        eval_samples=100,
        prop1_samples=4000,
        seed=3,
        log=lambda *_: None,
    )
    for d in ("2", "5"):
        assert without_timings(again["dims"][d]) == without_timings(summary["dims"][d])  # same seed, same numbers


def test_cli_rejects_bad_settings(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["vocoder", "gaussian", "--out", str(tmp_path), "--steps", "0"])
    assert exit_info.value.code == 2 and "steps=0 must be ≥ 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dims", "0"], "dims=[0]"),
        (["--dims", "-4", "16"], "dims=[-4, 16]"),
        (["--dims", "4", "4"], "repeats"),
        (["--repeats", "0"], "repeats=0 must be ≥ 1"),
        (["--steps", "-5"], "steps=-5 must be ≥ 1"),
        (["--batch", "0"], "batch=0"),
        (["--lr", "nan"], "lr=nan"),
        (["--lr", "0"], "lr=0"),
        (["--eval-samples", "1"], "eval_samples=1"),
        (["--prop1-samples", "0"], "prop1_samples=0"),
        (["--seed", "-1"], "seed=-1"),
        (["--threads", "0"], "--threads=0"),
    ],
)
def test_cli_bad_settings_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        main(["vocoder", "gaussian", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_output_path_that_is_a_file_and_diverging_training_are_errors(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        main(["vocoder", "gaussian", "--out", str(tmp_path / "file"), "--dims", "2", "--steps", "5"])
    assert "existing file" in capsys.readouterr().err
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"reverse KL student \(D=4\): the loss is non-finite .* lr=1000000.0"):
        run_gaussian_study(
            str(out),
            dims=(4,),
            steps=20,
            lr=1e6,
            repeats=1,
            samples=8,
            eval_samples=50,
            prop1_samples=1000,
            log=lambda *_: None,
        )
    assert not out.exists()  # nothing saved as a finished study


# ----------------------------------------------------------------------------- repeats and the paper's parameterisation

TINY_STUDY = dict(dims=(3, 5), steps=40, repeats=3, samples=8, eval_samples=60, prop1_samples=600, seed=4)


@pytest.fixture(scope="module", params=["triangular", "paper"])
def tiny_study(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"study_{request.param}")
    summary = run_gaussian_study(str(out), parameterisation=request.param, log=lambda *_: None, **TINY_STUDY)
    return summary, (out / "table.md").read_text()


def test_paper_parameterisation_is_the_literal_map_with_exact_densities():
    dim = 6
    teacher = make_teacher(dim, seeded_generator(30), parameterisation="paper")
    r = torch.randn(dim, dim, generator=seeded_generator(30), dtype=F64).numpy()  # the R make_teacher drew
    mu = np.full(dim, 2.0)
    assert isinstance(teacher, FullGaussian) and not any(p.requires_grad for p in teacher.parameters())
    z = normal(50, dim, 31)
    x = teacher.sample(z)
    np.testing.assert_allclose(x.numpy(), mu + z.numpy() @ r.T, rtol=1e-12, atol=1e-12)  # x = µ + R·z
    np.testing.assert_allclose(teacher.inverse(x).numpy(), np.linalg.solve(r, (x.numpy() - mu).T).T, atol=1e-10)
    # float64 brute force: log N(x; µ, RRᵀ) by scipy, for teacher samples and for points far from them
    far = x + 3 * normal(50, dim, 32)
    for points in (x, far):
        expected = stats.multivariate_normal(mean=mu, cov=r @ r.T).logpdf(points.numpy())
        np.testing.assert_allclose(teacher.log_prob(points).numpy(), expected, rtol=1e-9, atol=1e-9)
    # the same distribution as the triangular (Cholesky) teacher of the same draw, but another map T
    triangular = make_teacher(dim, seeded_generator(30))
    torch.testing.assert_close(triangular.log_prob(far), teacher.log_prob(far), rtol=1e-10, atol=1e-10)
    assert abs(gaussian_kl(triangular, teacher).item()) < 1e-10
    assert (triangular.inverse(x) - teacher.inverse(x)).abs().max() > 0.1
    # so z-reconstruction tells the maps apart (0 only for the teacher's own map), reverse KL does not
    cholesky_map = FullGaussian.from_scale(teacher.mean, triangular.scale_tril())
    zs = normal(256, dim, 33)
    assert z_reconstruction_loss(FullGaussian.from_scale(teacher.mean, teacher.weight), teacher, zs).item() < 1e-20
    assert z_reconstruction_loss(cholesky_map, teacher, zs).item() > 1e-2
    assert abs(reverse_kl_loss(cholesky_map, teacher, zs).item()) < 1e-10


def test_full_student_densities_kl_and_training():
    g = torch.Generator().manual_seed(34)
    student = FullGaussian(4)
    with torch.no_grad():
        student.shift.copy_(torch.randn(4, generator=g, dtype=F64))
        student.weight.copy_(torch.randn(4, 4, generator=g, dtype=F64))
    teacher = make_teacher(4, seeded_generator(35), parameterisation="paper")
    z = normal(9, 4, 36)
    cov = (student.weight @ student.weight.T).detach()
    mvn = MultivariateNormal(student.mean.detach(), covariance_matrix=cov)
    x = student.sample(z).detach()
    torch.testing.assert_close(student.log_prob(x), mvn.log_prob(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(student.log_prob_of_latent(z), mvn.log_prob(x), rtol=1e-10, atol=1e-10)
    mvn_t = MultivariateNormal(teacher.mean, covariance_matrix=teacher.covariance())
    torch.testing.assert_close(gaussian_kl(student, teacher), kl_divergence(mvn, mvn_t), rtol=1e-9, atol=1e-9)
    # x-reconstruction learns the teacher's map itself: W → R (not merely WWᵀ → RRᵀ)
    trained, record = train_student(teacher, "x_rec", steps=400, batch=64, lr=0.05, generator=seeded_generator(37))
    assert isinstance(trained, FullGaussian) and record["kl"][-1] < 1e-3 * record["kl"][0]
    torch.testing.assert_close(trained.weight, teacher.weight, rtol=0, atol=2e-2)


def test_table_is_mean_std_median_of_the_per_repeat_entries(tiny_study):
    summary, table = tiny_study
    number = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
    cell = re.compile(rf"{number} ± {number} \({number}\)")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    first, second = table.split("**Expansion signal")
    for d, entry in summary["dims"].items():
        reps = entry["repeats"]
        assert len(reps) == TINY_STUDY["repeats"]
        columns = [
            [r["teacher"]["covariance_min_eigenvalue"] for r in reps],
            [r["teacher"]["loglik_teacher_samples"]["mean"] for r in reps],
            *([r["methods"][m]["vs_teacher_samples"]["mean_difference"] for r in reps] for m in METHODS),
            *([r["methods"][m]["kl_student_teacher"] for r in reps] for m in METHODS),
        ]
        expansion = [[r["expansion"][k] for r in reps] for k in ("start", "peak", "end_mean_last_10pct")]
        prop = [
            [x["analytic"] for x in entry["proposition1"][k]["per_repeat"]]
            for k in ("teacher_vs_standard_student", "trained_reverse_kl_students")
        ]
        for text, values in (
            (next(line for line in first.splitlines() if line.startswith(f"| {d} |")), columns),
            (next(line for line in second.splitlines() if line.startswith(f"| {d} |")), expansion + prop),
        ):
            found = cell.findall(text)
            assert len(found) == len(values)
            for (mean, std, median), v in zip(found, values):
                v = np.asarray(v)
                assert float(mean) == pytest.approx(v.mean(), rel=5e-3, abs=5e-3)
                assert float(std) == pytest.approx(v.std(ddof=1), rel=5e-3, abs=5e-3)
                assert float(median) == pytest.approx(np.median(v), rel=5e-3, abs=5e-3)
        # and the JSON's aggregate holds the same numbers, unrounded
        agg = entry["over_repeats"]
        kl = [r["methods"]["reverse_kl"]["kl_student_teacher"] for r in reps]
        assert agg["methods"]["reverse_kl"]["kl_student_teacher"] == pytest.approx(
            {"mean": np.mean(kl), "std": np.std(kl, ddof=1), "median": np.median(kl), "min": min(kl), "max": max(kl)}
        )
        above = sum(r["methods"]["z_rec"]["vs_teacher_samples"]["z_score"] > 3 for r in reps)
        assert agg["methods"]["z_rec"]["repeats_above_teacher"] == above
        paired = summary["trends"]["kl_paired_by_dim"][d]["reverse_kl vs z_rec"]
        gaps = [
            r["methods"]["reverse_kl"]["kl_student_teacher"] - r["methods"]["z_rec"]["kl_student_teacher"] for r in reps
        ]
        assert paired == {
            "reverse_kl lower": sum(g < -1e-10 for g in gaps),
            "z_rec lower": sum(g > 1e-10 for g in gaps),
            "ties": sum(abs(g) <= 1e-10 for g in gaps),
        }
    assert set(rows) >= {"D", *summary["dims"]}
    assert f"parameterisation `{summary['settings']['parameterisation']}`" in table


def test_recorded_min_eigenvalue_is_numpys_eigvalsh_of_each_teacher(tiny_study):
    summary, _ = tiny_study
    seed = summary["settings"]["seed"]
    for d, entry in summary["dims"].items():
        smallest = []
        for r, row in enumerate(entry["repeats"]):
            scale = torch.randn(int(d), int(d), generator=seeded_generator(seed, int(d), 0, r), dtype=F64).numpy()
            expected = np.linalg.eigvalsh(scale @ scale.T)
            assert row["teacher"]["covariance_min_eigenvalue"] == pytest.approx(expected[0], rel=1e-9, abs=1e-12)
            np.testing.assert_allclose(row["teacher"]["covariance_eigenvalues"], expected, rtol=1e-9, atol=1e-12)
            smallest.append(expected[0])
        assert len(set(smallest)) == len(smallest)  # each repeat has its own teacher
    teacher = make_teacher(7, seeded_generator(40), parameterisation=summary["settings"]["parameterisation"])
    r = torch.randn(7, 7, generator=seeded_generator(40), dtype=F64).numpy()
    np.testing.assert_allclose(covariance_eigenvalues(teacher).numpy(), np.linalg.eigvalsh(r @ r.T), rtol=1e-9)


def test_over_repeats_of_one_value_and_of_several():
    assert over_repeats([2.5]) == {"mean": 2.5, "std": 0.0, "median": 2.5, "min": 2.5, "max": 2.5}
    stat = over_repeats([1.0, 2.0, 10.0])
    assert stat["median"] == 2.0 and stat["std"] == pytest.approx(np.std([1, 2, 10], ddof=1))


def test_bad_parameterisation_is_one_error_before_any_work(tmp_path, capsys, monkeypatch):
    import fdistill.vocoder.gaussian.study as module

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr(module, "make_teacher", no_work)
    monkeypatch.setattr(module, "train_student", no_work)
    out = tmp_path / "never"
    with pytest.raises(InputError, match=r"parameterisation='cholesky' is not valid: choose one of \['triangular'"):
        run_gaussian_study(str(out), dims=(3,), steps=5, repeats=1, parameterisation="cholesky")
    assert not out.exists()
    monkeypatch.undo()
    with pytest.raises(InputError, match="parameterisation='full'"):
        make_teacher(3, seeded_generator(0), parameterisation="full")
    with pytest.raises(SystemExit) as exit_info:
        main(["vocoder", "gaussian", "--out", str(out), "--parameterisation", "cholesky"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--parameterisation" in err and "'cholesky'" in err and not out.exists()
