"""The LM core's typed values and renamed settings: the teacher source, the deprecated setting names, the skip
tally, the objectives' own model-card rows and the package version."""

from __future__ import annotations

import warnings

import pytest

from fdistill.errors import InputError
from fdistill.lm.config import DEPRECATED_SETTINGS, DistillArguments, TeacherSource
from fdistill.lm.objectives import get_objective
from fdistill.lm.trainer import SkipTally, _record_changes


@pytest.mark.parametrize(
    "settings,kind",
    [
        (dict(objective="kl"), "model"),
        (dict(objective="mle"), "none"),
        (dict(objective="kl", teacher_topk_columns=True), "columns"),
        (dict(objective="js", teacher_server="http://127.0.0.1:9"), "server"),
    ],
)
def test_the_teacher_source_is_resolved_once_from_the_settings(settings, kind):
    source = DistillArguments(**settings).teacher_source
    assert isinstance(source, TeacherSource) and source.kind == kind
    assert source.is_topk == (kind in ("columns", "server"))
    assert DistillArguments(**settings).needs_teacher == (kind == "model")


@pytest.mark.parametrize(
    "old,new,value",
    [("teacher_topk_logprobs", "teacher_topk_columns", True), ("teacher_topk", "teacher_server_topk", 7)],
)
def test_an_old_setting_name_warns_once_naming_the_new_one_and_sets_it(old, new, value):
    assert DEPRECATED_SETTINGS[old] == new
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = DistillArguments(objective="kl", **{old: value})
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert len(messages) == 1 and new in messages[0] and old in messages[0]
    assert getattr(args, new) == value and getattr(args, old) == value
    assert old not in args.to_dict() and new in args.to_dict() and f"{old}=" not in repr(args).replace(f"{new}=", "")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        DistillArguments(objective="kl", **{new: value})  # the new name: no warning


def test_a_refused_value_given_under_an_old_name_names_both():
    with pytest.warns(FutureWarning), pytest.raises(InputError, match="teacher_server_topk=0.*teacher_topk, as it"):
        DistillArguments(objective="kl", teacher_server="http://127.0.0.1:9", teacher_topk=0)


def test_tail_temperature_is_one_rule_for_stored_and_served_top_k():
    for source in (dict(teacher_topk_columns=True), dict(teacher_server="http://127.0.0.1:9")):
        with pytest.raises(InputError, match="loss_temperature=2.0 with a top-k teacher.*untempered"):
            DistillArguments(objective="kl", loss_temperature=2.0, **source)
        DistillArguments(objective="kl", loss_temperature=2.0, teacher_topk_mode="renormalised", **source)


def test_a_record_written_under_the_old_names_is_compared_under_the_new_ones():
    now = {"settings": {"teacher_topk_columns": True, "teacher_topk_mode": "tail"}, "teacher": None, "tokenizer": "t"}
    old = {"settings": {"teacher_topk_logprobs": False}, "teacher": None, "tokenizer": "t"}
    assert _record_changes(old, now) == ["teacher_topk_columns=False then, True now"]


def test_the_skip_tally_averages_the_logged_losses_over_kept_micro_batches():
    tally = SkipTally()
    for skipped in (False, True, False, False):
        tally.count(True)
        if skipped:
            tally.skip()
    logs = {"loss": 3.0, "train_loss": 3.0}
    tally.log(logs)
    assert logs == {"loss": 4.0, "train_loss": 4.0, "nonfinite_skipped": 1}
    assert (tally.window_trained, tally.window_skipped, tally.trained, tally.skipped) == (0, 0, 4, 1)


def test_each_objective_gives_its_own_model_card_rows():
    class Config:
        fdistill_teacher_layers = {"decoder": [0, 2]}

    args = DistillArguments(objective="predistill", predistill_alpha_hidden=0.1)
    assert get_objective("predistill").card_rows(args, Config()) == [("predistill_layer_map", [0, 2])]
    assert get_objective("predistill").card_rows(DistillArguments(objective="predistill"), Config()) == []
    assert get_objective("kl").card_rows(DistillArguments(objective="kl"), Config()) == []


def test_the_version_is_the_installed_package_metadata():
    from importlib.metadata import version

    import fdistill
    from fdistill._version import __version__

    assert fdistill.__version__ == __version__ == version("fdistill")
