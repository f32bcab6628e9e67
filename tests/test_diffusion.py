"""fdistill.diffusion: the DDIM map and its inverse, every loss at its target, DSM/VSD against closed-form Gaussian
scores, the exact denoiser of a point mass, then every method end to end on tiny settings with resume."""

import math

import pytest
import torch

from fdistill.diffusion import ddim_step, progressive_target
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
    x_s, x_t = torch.randn(64, 5, generator=g, dtype=torch.float64), torch.randn(64, 5, generator=g, dtype=torch.float64)
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
    s, _, a, sg, _, _ = _times(32, g, low=10)
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
    per = torch.stack([denoising_loss(v_hat[i:i + 1], x0[i:i + 1], eps[i:i + 1], a[i:i + 1], s[i:i + 1])
                       for i in range(16)])
    dsm = torch.stack([dsm_loss(score[i:i + 1], x_t[i:i + 1], x0[i:i + 1], a[i:i + 1], s[i:i + 1]) for i in range(16)])
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
    assert dsm_loss(exact, *args) < dsm_loss(exact + 0.05, *args) and dsm_loss(exact, *args) < dsm_loss(exact * 1.05, *args)


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
