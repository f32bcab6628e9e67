"""Students from teachers (fdistill.lm.student): layer picking, layer copying per family, LoRA wrapping."""

import re

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from fdistill.lm.student import create_student_from_teacher, merge_lora, pick_layers, wrap_with_lora

VOCAB = 100


def make_gpt2():
    return GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64))


def make_llama():
    config = LlamaConfig(
        num_hidden_layers=6,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def make_bart():
    config = BartConfig(
        encoder_layers=4,
        decoder_layers=4,
        d_model=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    return BartForConditionalGeneration(config)


def make_t5():
    config = T5Config(num_layers=4, num_decoder_layers=4, d_model=32, d_ff=64, d_kv=8, num_heads=4, vocab_size=VOCAB)
    return T5ForConditionalGeneration(config)


# family -> (teacher factory, {stack: ModuleList name}, kwargs for a 2-layer student)
FAMILIES = {
    "gpt2": (make_gpt2, {"decoder": "transformer.h"}, {"layers": [1, 4]}),
    "llama": (make_llama, {"decoder": "model.layers"}, {"num_layers": 2}),
    "bart": (
        make_bart,
        {"encoder": "model.encoder.layers", "decoder": "model.decoder.layers"},
        {"encoder_layers": [0, 3], "num_decoder_layers": 2},
    ),
    "t5": (
        make_t5,
        {"encoder": "encoder.block", "decoder": "decoder.block"},
        {"encoder_layers": [1, 3], "decoder_layers": [2, 3]},  # block 0 not copied: tests the T5 bias rule
    ),
}


def teacher_for(family):
    torch.manual_seed(0)
    return FAMILIES[family][0]().eval()


def all_layers_kwargs(teacher):
    config = teacher.config
    if config.is_encoder_decoder:
        names = FAMILIES[config.model_type][1]
        count = {stack: len(teacher.get_submodule(name)) for stack, name in names.items()}
        return {"encoder_layers": range(count["encoder"]), "decoder_layers": range(count["decoder"])}
    return {"layers": range(config.num_hidden_layers)}


def logits(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (2, 7), generator=generator)
    kwargs = {}
    if model.config.is_encoder_decoder:
        kwargs["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 5), generator=generator)
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits


# ----------------------------------------------------------------------------- pick_layers


@pytest.mark.parametrize(
    "n_teacher, n_student, expected",
    [
        (12, 3, [0, 6, 11]),
        (30, 4, [0, 10, 19, 29]),
        (12, 1, [0]),
        (12, 6, [0, 2, 4, 7, 9, 11]),  # as in Shleifer & Rush's LAYERS_TO_COPY table
        (5, 5, [0, 1, 2, 3, 4]),
    ],
)
def test_pick_layers(n_teacher, n_student, expected):
    assert pick_layers(n_teacher, n_student) == expected


@pytest.mark.parametrize("n_student", [0, 13])
def test_pick_layers_rejects_bad_counts(n_student):
    with pytest.raises(ValueError, match=rf"{n_student} student layers out of 12.*between 1 and 12"):
        pick_layers(12, n_student)


# ----------------------------------------------------------------------------- layer copying, every family


@pytest.mark.parametrize("family", FAMILIES)
def test_student_copies_chosen_layers_and_all_other_weights(family):
    teacher = teacher_for(family)
    _, names, kwargs = FAMILIES[family]
    student = create_student_from_teacher(teacher, **kwargs)
    mapping = student.config.fdistill_teacher_layers

    assert type(student) is type(teacher)
    assert set(mapping) == set(names)
    assert all(len(indices) == 2 for indices in mapping.values())
    for name in names.values():
        assert len(student.get_submodule(name)) == 2
        assert len(teacher.get_submodule(name)) == (6 if family in ("gpt2", "llama") else 4)

    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    layer_key = re.compile(r"(" + "|".join(re.escape(n) for n in names.values()) + r")\.(\d+)\.(.*)")
    for key, value in student_state.items():
        match = layer_key.fullmatch(key)
        if match is None:  # embeddings, positions, final norms, LM head, biases
            source = key
        else:
            stack = next(s for s, n in names.items() if n == match.group(1))
            source = f"{match.group(1)}.{mapping[stack][int(match.group(2))]}.{match.group(3)}"
            if "relative_attention_bias" in key:  # T5: block 0 keeps the teacher's block-0 bias
                source = f"{match.group(1)}.0.{match.group(3)}"
        torch.testing.assert_close(value, teacher_state[source], rtol=0, atol=0, msg=key)
        assert value.data_ptr() != teacher_state[source].data_ptr(), f"{key} shares memory with the teacher"

    torch.testing.assert_close(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    torch.testing.assert_close(student.get_output_embeddings().weight, teacher.get_output_embeddings().weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_student_with_all_layers_matches_teacher(family):
    teacher = teacher_for(family)
    student = create_student_from_teacher(teacher, **all_layers_kwargs(teacher)).eval()
    torch.testing.assert_close(logits(student), logits(teacher), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_layer_student_runs_and_differs(family):
    teacher = teacher_for(family)
    student = create_student_from_teacher(teacher, **FAMILIES[family][2]).eval()
    out = logits(student)
    assert out.shape == logits(teacher).shape
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, logits(teacher))


@pytest.mark.parametrize("family", FAMILIES)
def test_mapping_survives_save_and_load(family, tmp_path):
    teacher = teacher_for(family)
    student = create_student_from_teacher(teacher, **FAMILIES[family][2]).eval()
    student.save_pretrained(tmp_path)
    reloaded = type(student).from_pretrained(tmp_path).eval()
    assert reloaded.config.fdistill_teacher_layers == student.config.fdistill_teacher_layers
    torch.testing.assert_close(logits(reloaded), logits(student))


def test_mapping_values():
    assert create_student_from_teacher(teacher_for("gpt2"), num_layers=3).config.fdistill_teacher_layers == {
        "decoder": [0, 2, 5]
    }
    bart = create_student_from_teacher(teacher_for("bart"), num_decoder_layers=2)
    assert bart.config.fdistill_teacher_layers == {"encoder": [0, 1, 2, 3], "decoder": [0, 3]}
    assert (bart.config.encoder_layers, bart.config.decoder_layers) == (4, 2)
    t5 = create_student_from_teacher(teacher_for("t5"), decoder_layers=[1])
    assert (t5.config.num_layers, t5.config.num_decoder_layers) == (4, 1)


def test_llama_keeps_tied_embeddings_and_kv_heads():
    teacher = teacher_for("llama")
    student = create_student_from_teacher(teacher, num_layers=2)
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert student.get_input_embeddings().weight is not teacher.get_input_embeddings().weight
    assert student.config.num_key_value_heads == 2
    assert student.config.num_hidden_layers == 2


def test_per_layer_config_lists_are_sliced():
    torch.manual_seed(0)
    config = Qwen2Config(
        num_hidden_layers=4,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        use_sliding_window=True,
        sliding_window=3,
        max_window_layers=2,
    )
    teacher = Qwen2ForCausalLM(config).eval()
    assert teacher.config.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    student = create_student_from_teacher(teacher, layers=[0, 3])
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    full = create_student_from_teacher(teacher, layers=range(4)).eval()
    torch.testing.assert_close(logits(full), logits(teacher), rtol=0, atol=0)


def test_student_keeps_teacher_dtype():
    teacher = teacher_for("llama").to(torch.bfloat16)
    student = create_student_from_teacher(teacher, num_layers=2)
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "family, kwargs, message",
    [
        ("gpt2", {"layers": [0, 6]}, r"indices \[6\] out of range.*6 layers.*0\.\.5"),
        ("gpt2", {"layers": [0, 2], "num_layers": 2}, r"either layers= or num_layers=, not both"),
        ("gpt2", {"layers": [3, 1]}, r"strictly increasing"),
        ("gpt2", {"layers": []}, r"empty"),
        ("gpt2", {}, r"no layers chosen.*layers=.*num_layers="),
        ("gpt2", {"num_layers": 7}, r"7 student layers out of 6"),
        ("gpt2", {"decoder_layers": [0]}, r"decoder-only.*pass layers= or num_layers="),
        ("bart", {"num_layers": 2}, r"encoder-decoder.*num_decoder_layers="),
        ("t5", {"decoder_layers": [0, 4]}, r"decoder_layers=\[0, 4\].*out of range.*0\.\.3"),
    ],
)
def test_bad_input_raises(family, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_student_from_teacher(teacher_for(family), **kwargs)


def test_unknown_architecture_raises():
    class TwoStacks(GPT2LMHeadModel):  # a second ModuleList of the same length: the stack is ambiguous
        def __init__(self, config):
            super().__init__(config)
            self.extra = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(config.n_layer))

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64)
    config.model_type = "not-a-known-family"
    with pytest.raises(ValueError, match=r"cannot find the layer stack.*LAYER_LISTS"):
        create_student_from_teacher(TwoStacks(config), num_layers=1)


# ----------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("family", ["llama", "bart"])
def test_lora_trains_adapters_only_and_merges(family):
    student = create_student_from_teacher(teacher_for(family), **FAMILIES[family][2])
    base_before = {k: v.clone() for k, v in student.state_dict().items()}
    model = wrap_with_lora(student, r=4, alpha=8)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    expected_task = "SEQ_2_SEQ_LM" if family == "bart" else "CAUSAL_LM"
    assert model.peft_config["default"].task_type == expected_task

    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (2, 6), generator=generator)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()

    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen_before.items())
    # lora_B starts at zero, so after one step it must have moved
    assert any(not torch.equal(params[n], v) for n, v in lora_before.items() if "lora_B" in n)

    model.eval()
    wrapped_logits = logits(model)
    merged = merge_lora(model)
    assert type(merged) is type(student)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), wrapped_logits, rtol=1e-5, atol=1e-5)
    # merging really changed the base weights (adapters were non-zero)
    assert any(not torch.equal(v, base_before[k]) for k, v in merged.state_dict().items() if k in base_before)


def test_merge_lora_rejects_plain_models():
    with pytest.raises(ValueError, match="needs a peft model"):
        merge_lora(teacher_for("gpt2"))
