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
