"""The shared experiment runner: guarded steps never let a NaN reach the weights, a mostly-skipped stage is an error,
stages resume only with the same settings, histories keep non-finite values visible."""

import json
import os

import pytest
import torch

from fdistill.errors import InputError, NonFiniteError
from fdistill.flows.checks import StageFileError
from fdistill.runner import History, StepGuard, guarded_step, run_stage


def _model():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    return net, torch.optim.Adam(net.parameters(), lr=0.1)


def test_guarded_step_takes_finite_and_skips_nan_loss_and_nan_gradient():
    net, opt = _model()
    before = [p.detach().clone() for p in net.parameters()]
    assert not guarded_step(opt, net(torch.ones(2, 3)).sum() * float("nan"), net.parameters(), 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert not opt.state  # the optimiser's moments never saw a bad gradient
    assert guarded_step(opt, net(torch.ones(2, 3)).pow(2).sum(), net.parameters(), 1.0)
    assert not torch.equal(before[0], net.weight)


def test_guarded_step_skips_a_finite_loss_with_infinite_gradient():
    w = torch.nn.Parameter(torch.tensor([0.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    loss = torch.sqrt(w.abs()).sum()  # finite (0) but d/dw sqrt(|w|) at 0 is inf
    assert torch.isfinite(loss)
    assert not guarded_step(opt, loss, [w], max_grad_norm=None)
    assert w.item() == 0.0 and w.grad is None


def test_guarded_step_clips_the_gradient_norm():
    w = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    assert guarded_step(opt, (w * torch.tensor([300.0, 400.0])).sum(), [w], max_grad_norm=5.0)
    torch.testing.assert_close(w.detach(), torch.tensor([-3.0, -4.0]))


def test_step_guard_reports_a_diverged_stage_with_name_and_count():
    net, opt = _model()
    guard = StepGuard("pd round 2")
    for i in range(5):
        guard.step(opt, net(torch.ones(1, 3)).sum() * (float("nan") if i < 3 else 1.0), net.parameters(), 1.0)
    with pytest.raises(NonFiniteError, match=r"'pd round 2' diverged: 3 of 5 .*learning rate"):
        guard.finish()
    ok = StepGuard("teacher")
    ok.step(opt, net(torch.ones(1, 3)).sum() * float("nan"), net.parameters())
    ok.step(opt, net(torch.ones(1, 3)).sum(), net.parameters())
    assert ok.finish() == {"steps_taken": 1, "steps_skipped": 1}


def test_history_keeps_non_finite_values_visible():
    h = History()
    h.log(step=1, loss=torch.tensor(0.5))
    h.log(step=2, loss=float("nan"))
    h.log(step=3, loss=float("-inf"))
    assert h.column("loss") == [0.5, "nan", "-inf"] and h.last("step") == 3
    json.dumps(h.rows)


def test_run_stage_saves_resumes_and_refuses_other_settings(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"w": torch.arange(3.0)}, {"loss": 0.25}

    first = run_stage(str(tmp_path), "teacher", {"lr": 0.1}, work, log=None)
    second = run_stage(str(tmp_path), "teacher", {"lr": 0.1}, work, log=None)
    assert len(calls) == 1 and not first.resumed and second.resumed
    assert torch.equal(second.tensors["w"], torch.arange(3.0)) and second.record == {"loss": 0.25}
    with pytest.raises(InputError, match="other settings .*lr"):
        run_stage(str(tmp_path), "teacher", {"lr": 0.2}, work, log=None)
    assert len(calls) == 1


def test_run_stage_redoes_an_interrupted_stage_and_refuses_pickles(tmp_path):
    calls = []

    def work():
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return {"w": torch.zeros(1)}, {}

    with pytest.raises(KeyboardInterrupt):
        run_stage(str(tmp_path), "s", {}, work, log=None)
    assert not os.listdir(tmp_path)
    run_stage(str(tmp_path), "s", {}, work, log=None)
    assert len(calls) == 2
    torch.save({}, tmp_path / "p.pt")
    with pytest.raises(StageFileError, match="pickle"):
        run_stage(str(tmp_path), "p", {}, work, log=None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        run_stage(str(tmp_path / "file"), "s", {}, work, log=None)


def test_step_guard_with_planned_steps_stops_early_with_the_callers_error_and_wording():
    net, opt = _model()
    guard = StepGuard(
        "teacher",
        planned=6,
        error=InputError,
        hint="lower learning_rate",
        message="{stage}: {skipped} of {total} steps skipped ({taken} taken); likely cause: {hint}",
    )

    def nan():
        return net(torch.ones(1, 3)).sum() * float("nan")

    for _ in range(3):
        assert not guard.step(opt, nan(), net.parameters())  # 3 of 6: the stage may still finish
    with pytest.raises(InputError, match=r"^teacher: 4 of 6 steps skipped \(0 taken\); likely cause: lower"):
        guard.step(opt, nan(), net.parameters())
    strict = StepGuard("gaussian", max_skipped_fraction=0.0, planned=10)
    assert strict.step(opt, net(torch.ones(1, 3)).sum(), net.parameters())
    with pytest.raises(NonFiniteError, match="'gaussian' diverged: 1 of 10"):
        strict.step(opt, nan(), net.parameters())
    late = StepGuard("flow", error=InputError, message="{stage} failed: {problem} ({skipped} of {total}{where})")
    late.step(opt, nan(), net.parameters())
    with pytest.raises(InputError, match=r"flow failed: most skipped \(1 of 1, at step 0\)"):
        late.finish(problem="most skipped", where=", at step 0")
    assert str(late.failure(problem="no epoch", where="")) == "flow failed: no epoch (1 of 1)"
    with pytest.raises(InputError, match="planned"):
        StepGuard("x", planned=-1)


def test_run_stage_keeps_extra_entries_beside_the_record(tmp_path):
    def work():
        return {"w": torch.ones(2)}, {"loss": 0.5}, {"history": [1.0, 0.5]}

    first = run_stage(str(tmp_path), "s", {"a": 1}, work, log=None)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved == {"settings": {"a": 1}, "record": {"loss": 0.5}, "history": [1.0, 0.5]}
    again = run_stage(str(tmp_path), "s", {"a": 1}, work, log=None)
    assert first.extra == again.extra == {"history": [1.0, 0.5]} and again.record == {"loss": 0.5}
    assert run_stage(str(tmp_path), "t", {}, lambda: ({}, {}), log=None).extra == {}
    with pytest.raises(ValueError, match="settings or record"):
        run_stage(str(tmp_path), "u", {}, lambda: ({}, {}, {"record": 1}), log=None)
