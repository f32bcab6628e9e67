"""The one parser of settings read from text (recipes, --config files, key=value overrides): typed values or one
clear error naming the key — never another exception type (issue 15, item 2)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdistill.cli import RunArguments
from fdistill.errors import InputError
from fdistill.lm.config import DistillArguments, FDistillConfig
from fdistill.yaml_config import convert, field_types, load_settings, parse_overrides, typed_values

TYPES = field_types(RunArguments, FDistillConfig)


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("learning_rate", "5e-5", 5e-5),
        ("learning_rate", "5E-5", 5e-5),
        ("learning_rate", "1_000.5", 1000.5),
        ("learning_rate", "3", 3.0),
        ("max_steps", "1e3", 1000),
        ("max_steps", "12", 12),
        ("max_steps", "12.0", 12),
        ("use_chat_template", "false", False),
        ("use_chat_template", "no", False),
        ("use_chat_template", "0", False),
        ("use_chat_template", "True", True),
        ("use_chat_template", "yes", True),
        ("use_chat_template", "1", True),
        ("student_layers", "[0, 3]", [0, 3]),
        ("student_layers", "null", None),
        ("student_layers", "None", None),
        ("fused_divergence", "null", None),
        ("fused_divergence", "true", True),
        ("report_to", "none", "none"),
        ("report_to", "[tensorboard]", ["tensorboard"]),
        ("run_name", "2024", "2024"),
        ("objective", "js", "js"),
        ("lr_scheduler_type", "constant", "constant"),
        ("fused_chunk_size", "4096", 4096),
    ],
)
def test_override_text_becomes_the_fields_type(key, text, expected):
    value = typed_values(parse_overrides([f"{key}={text}"]), TYPES, "recipe")[key]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("use_chat_template", "maybe", "use_chat_template='maybe' is not valid: expected true or false"),
        ("use_chat_template", 2, "use_chat_template=2"),
        ("learning_rate", [1, 2], "learning_rate=[1, 2] is not valid: expected a number"),
        ("learning_rate", "fast", "learning_rate='fast'"),
        ("learning_rate", True, "learning_rate=True"),
        ("max_steps", "2.5", "max_steps='2.5' is not valid: expected a whole number"),
        ("max_steps", "inf", "max_steps='inf'"),
        ("student_layers", "0,3", "a list of ints like [0, 1]"),
        ("student_layers", [0, "x"], "student_layers=[0, 'x']"),
        ("objective", False, "YAML reads yes/no/on/off as booleans: quote the text"),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_fix(key, value, fragment):
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        typed_values({key: value}, TYPES, "recipe")


def test_unknown_keys_suggest_the_closest():
    with pytest.raises(
        InputError, match=r"unknown recipe keys \['learnig_rate'\] — 'learnig_rate': did you mean learning_rate"
    ):
        typed_values({"learnig_rate": 1e-3}, TYPES, "recipe")
    with pytest.raises(InputError, match="valid keys: "):
        typed_values({"zzzzzz": 1}, TYPES, "recipe")


def test_files_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 5e-5\nuse_chat_template: 'false'\nmax_steps: 10\n")
    assert load_settings(str(recipe), ["max_steps=20"], TYPES) == {
        "learning_rate": 5e-5,
        "use_chat_template": False,
        "max_steps": 20,
    }
    for path, fragment in [(tmp_path / "missing.yaml", "not found"), (tmp_path, "is a folder")]:
        with pytest.raises(InputError, match=fragment):
            load_settings(str(path), [], TYPES)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    for name, fragment in [("list.yaml", "holds a list, not a mapping"), ("broken.yaml", "is not valid YAML")]:
        with pytest.raises(InputError, match=fragment):
            load_settings(str(tmp_path / name), [], TYPES)
    with pytest.raises(InputError, match="not key=value"):
        parse_overrides(["max_steps"])


SETTINGS_KEYS = sorted(k for k in field_types(DistillArguments))
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "1",
            "0",
            "-1",
            "1e9",
            "nan",
            "inf",
            "-inf",
            "[1, 2]",
            "{a: 1}",
            "null",
            "yes",
            "no",
            "true",
            "0.5",
            "[",
            "'x'",
            "kl",
            "js",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(SETTINGS_KEYS), text=TEXT)
def test_any_override_is_a_typed_value_or_one_error_naming_the_key(key, text):
    """Property: a ``key=text`` override of a distillation setting gives DistillArguments or one ValueError that
    names the key — never TypeError, KeyError, AttributeError, ..."""
    try:
        values = typed_values(parse_overrides([f"{key}={text}"]), TYPES, "recipe")
        DistillArguments(**values)
    except ValueError as error:
        assert key in str(error) or "predistill_alpha" in str(error), (key, text, error)


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
    annotation=st.sampled_from(
        [int, float, bool, str, list[int], list[str], int | None, list[int] | None, dict, str | bool, dict | str | None]
    ),
)
def test_convert_returns_the_annotation_or_raises_input_error(value, annotation):
    try:
        out = convert("k", value, annotation)
    except InputError as error:
        assert str(error).startswith("k=")
        return
    if annotation is float:
        assert isinstance(out, float) and (math.isnan(out) or out == float(value))
    elif annotation in (int, bool, str):
        assert type(out) is annotation


# Training settings transformers accepts as typed but that cannot be meant at some values (issue 22, item 6), and
# what every accepted value must satisfy: a config that builds is one that can be meant.
_FINITE = math.isfinite
MEANT = {
    "per_device_train_batch_size": lambda v: v >= 1,
    "per_device_eval_batch_size": lambda v: v >= 1,
    "gradient_accumulation_steps": lambda v: v >= 1,
    "max_steps": lambda v: v >= 1 or v == -1,
    "num_train_epochs": lambda v: _FINITE(v) and v > 0,
    "learning_rate": lambda v: _FINITE(v) and v > 0,
    "weight_decay": lambda v: _FINITE(v) and v >= 0,
    "max_grad_norm": lambda v: _FINITE(v) and v >= 0,
    "adam_beta1": lambda v: 0 <= v < 1,
    "adam_beta2": lambda v: 0 <= v < 1,
    "adam_epsilon": lambda v: _FINITE(v) and v >= 0,
    "warmup_steps": lambda v: _FINITE(v) and v >= 0,
    "logging_steps": lambda v: _FINITE(v) and v > 0,
    "save_steps": lambda v: _FINITE(v) and v > 0,
    "eval_steps": lambda v: v is None or (_FINITE(v) and v > 0),
    "save_total_limit": lambda v: v is None or v >= 1,
    "seed": lambda v: 0 <= v < 2**32,
    "data_seed": lambda v: v is None or 0 <= v < 2**32,
    "dataloader_num_workers": lambda v: v >= 0,
    "label_smoothing_factor": lambda v: v == 0,
}
NUMBER_TEXT = st.one_of(
    st.integers(-3, 3).map(str),
    st.sampled_from(["0.0", "0.5", "1.0", "1.5", "-0.5", "nan", "inf", "-inf", "1e-9", "2e9", "4294967296", "null"]),
)


def _config(values):
    return FDistillConfig(output_dir="unused", use_cpu=True, report_to=[], **values)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(MEANT)), text=NUMBER_TEXT, with_epochs=st.booleans())
def test_a_training_setting_is_accepted_only_when_it_can_be_meant(key, text, with_epochs):
    """Property: ``key=text`` gives a config whose value can be meant (table MEANT), or one ValueError naming the key;
    never a config with a zero count, a learning rate of 0, a NaN norm, a seed outside [0, 2^32) ..."""
    values = {"max_steps": -1} if with_epochs and key != "max_steps" else {}
    try:
        values.update(typed_values(parse_overrides([f"{key}={text}"]), TYPES, "recipe"))
        if key == "eval_steps":
            values["eval_strategy"] = "steps"
        config = _config(values)
    except ValueError as error:
        assert key in str(error), (key, text, error)
        return
    given_value = values[key]
    assert MEANT[key](given_value), (key, text)
    if key == "eval_steps" and given_value is None:
        assert config.eval_steps == config.logging_steps  # transformers' documented default, not a rewritten 0


_SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
_SCHEDULERS += ["inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"]
_KWARG_NAMES = ["num_cycles", "power", "lr_end", "timescale", "min_lr", "num_decay_steps", "last_epoch", "foo"]


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(_SCHEDULERS), names=st.lists(st.sampled_from(_KWARG_NAMES), max_size=3, unique=True))
def test_scheduler_kwargs_are_accepted_only_when_the_scheduler_takes_them(kind, names):
    """Property: lr_scheduler_kwargs pass only when transformers' get_scheduler uses every one of them — it neither
    raises "unexpected keyword argument" on them nor drops them silently (constant schedules)."""
    import torch
    from transformers import get_scheduler

    kwargs = dict.fromkeys(names, 1)
    try:
        config = _config({"lr_scheduler_type": kind, "lr_scheduler_kwargs": kwargs})
    except InputError as error:
        assert "lr_scheduler_kwargs" in str(error) and names, error
        assert kind in ("constant", "constant_with_warmup") or any(f"'{n}'" in str(error) for n in names), error
        return
    assert not names or kind not in ("constant", "constant_with_warmup")  # their kwargs would be ignored
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    try:
        get_scheduler(
            config.lr_scheduler_type,
            optimizer,
            num_warmup_steps=1,
            num_training_steps=10,
            scheduler_specific_kwargs=config.lr_scheduler_kwargs,
        )
    except TypeError as error:
        assert "unexpected keyword" not in str(error), (kind, names, error)
    except (ValueError, KeyError):
        pass  # a value the scheduler rejects (e.g. min_lr without min_lr_rate): its names were right


def test_the_memory_rule_refuses_exactly_the_batches_past_all_memory(monkeypatch):
    """batch × bytes per item > RAM + GPU memory is refused, naming the setting, the size and the largest batch
    that fits; equal is accepted (the rule of fdistill.checks.batch_fits)."""
    import fdistill.checks
    from fdistill.checks import batch_fits

    monkeypatch.setattr(fdistill.checks, "machine_memory_bytes", lambda: 2**30)
    batch_fits("per_device_train_batch_size", 2**10, 2**20, "logits", "")
    with pytest.raises(InputError, match=r"per_device_train_batch_size=1025 cannot fit in memory: logits alone take "):
        batch_fits("per_device_train_batch_size", 2**10 + 1, 2**20, "logits", "")
    with pytest.raises(InputError, match="use at most 1,024"):
        batch_fits("batch_size", 10**6, 2**20, "logits", "")
    config = _config({"per_device_train_batch_size": 64, "max_target_length": 64, "max_new_tokens": 8})
    config.check_batch_memory(2**16)  # 64 × 64 positions × 2^16 vocabulary × 4 bytes = 1 GiB: fits
    with pytest.raises(InputError, match="per_device_train_batch_size=65 cannot fit"):
        _config({"per_device_train_batch_size": 65, "max_target_length": 64}).check_batch_memory(2**16)
    # the fused path never materialises [tokens, vocab] logits: the same batch is not bounded by them
    _config({"per_device_train_batch_size": 65, "max_target_length": 64, "fused_divergence": True}).check_batch_memory(
        2**16
    )
    assert fdistill.checks.machine_memory_bytes() > 0
