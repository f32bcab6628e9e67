"""Issue 23, the LM trainer's split: the rollout seam, the scoring helpers and the old import paths."""

from types import SimpleNamespace

import pytest
import torch

from fdistill.errors import InputError
from fdistill.lm import rollouts, scoring


def test_old_import_paths_still_work():
    from fdistill.lm.config import (  # noqa: F401
        DEPRECATED_SETTINGS,
        NONFINITE_POLICIES,
        SECRET_SETTINGS,
        TOPK_COLUMNS,
        DistillArguments,
        FDistillConfig,
        TeacherSource,
        unknown_scheduler_kwargs,
    )
    from fdistill.lm.trainer import FDistillMixin, Scored, SkipTally, StepSamples, _record_changes  # noqa: F401

    assert TeacherSource("server").is_topk and not TeacherSource("model").is_topk
    assert SkipTally is scoring.SkipTally and StepSamples is rollouts.StepSamples


def test_cache_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert rollouts.cache_implementation("auto", cuda) == "static"
    assert rollouts.cache_implementation("auto", cpu) is None
    assert rollouts.cache_implementation("static", cpu) == "static"
    assert rollouts.cache_implementation("dynamic", cuda) is None


def _batch(n=2, length=3):
    return {"prompt_ids": torch.ones(n, length, dtype=torch.long), "prompt_mask": torch.ones(n, length, dtype=bool)}


def test_samplers_draw_in_their_order_and_their_samples_are_attached():
    calls = []

    def sampler(name, width):
        def draw(ids, mask):
            calls.append(name)
            return torch.zeros(ids.shape[0], width, dtype=torch.long), torch.ones(ids.shape[0], width, dtype=bool)

        return draw

    samplers = {"teacher": sampler("teacher", 2), "student": sampler("student", 4)}
    inputs = _batch()
    assert rollouts.missing(inputs, samplers)
    rollouts.attach(inputs, rollouts.online_samples(inputs, samplers, torch.device("cpu")))
    assert calls == ["teacher", "student"]
    assert inputs["teacher_ids"].shape == (2, 2) and inputs["student_mask"].shape == (2, 4)
    assert not rollouts.missing(inputs, samplers)

    one = SimpleNamespace(num_processes=1)
    samples, counts = rollouts.draw_step([_batch(), _batch(3)], samplers, torch.device("cpu"), "token", one)
    assert len(samples) == 2 and calls[2:] == ["teacher", "student"] * 2
    assert counts["student"].item() == 5 * 4 and counts["teacher"].item() == 5 * 2


def test_step_samples_draw_once_per_step():
    step, draws = rollouts.StepSamples(), []
    step.start(["a", "b"])

    def draw(batches):
        draws.append(list(batches))
        return [{"n": 0}, {"n": 1}], {"student": torch.tensor(2.0)}

    assert step.pending and step.next(draw) == {"n": 0} and step.next(draw) == {"n": 1}
    assert not step.pending and draws == [["a", "b"]] and step.counts["student"].item() == 2


def test_stored_topk_serves_the_offline_teacher_samples_only():
    inputs = {"teacher_topk_ids": torch.zeros(1, 2, 3, dtype=torch.long), "teacher_topk_logprobs": torch.zeros(1, 2, 3)}
    assert set(scoring.stored_topk(inputs, ["teacher"])) == {"teacher"}
    with pytest.raises(InputError, match="student samples"):
        scoring.stored_topk(inputs, ["teacher", "student"])


def test_student_layer_choices_are_refused_as_input_errors():
    from transformers import GPT2Config, GPT2LMHeadModel

    from fdistill.lm.student import create_student_from_teacher

    teacher = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(InputError, match="no layers chosen"):
        create_student_from_teacher(teacher)
    with pytest.raises(InputError, match="decoder-only"):
        create_student_from_teacher(teacher, num_encoder_layers=1)
    student = create_student_from_teacher(teacher, num_layers=2)
    assert student.config.n_layer == 2 and student.config.fdistill_teacher_layers == {"decoder": [0, 3]}
