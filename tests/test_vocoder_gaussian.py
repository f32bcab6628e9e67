"""The Gaussian study (fdistill.vocoder.gaussian): exact densities and inverses, losses that vanish at student =
teacher, the path-derivative signal, Proposition 1 (Imhof) against closed forms and Monte Carlo, training, the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal, kl_divergence

from fdistill.cli import main
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
from fdistill.vocoder.gaussian import seeded_generator

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
        "table.md",
        "summary.json",
    ):
        assert (tmp_path / "cli" / name).stat().st_size > 500
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert set(summary["dims"]) == {"2", "5"} and summary["settings"]["steps"] == 60
    entry = summary["dims"]["5"]
    assert set(entry["methods"]) == {"reverse_kl", "z_rec", "x_rec"}
    assert entry["methods"]["reverse_kl"]["kl_student_teacher"] > 0
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
