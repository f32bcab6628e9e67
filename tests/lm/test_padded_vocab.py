"""Padded vocabularies (issue 17, item 3): teacher and student of one family whose LM heads are padded past the
shared tokenizer to different sizes train on the tokenizer's tokens — the same loss as the models with the
padding rows removed, in the plain and the fused path — and different tokenizers are refused."""

import pytest
import torch
import transformers
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.kernels import LinearHead
from fdistill.lm.data import pad_right
from fdistill.lm.loading import shared_vocab_size
from fdistill.torch_utils import seeded

transformers.logging.set_verbosity_error()
V = tiny.VOCAB  # the tokenizer's tokens


def padded(model: LlamaForCausalLM, rows: int, seed: int) -> LlamaForCausalLM:
    """``model`` with its embedding and LM head padded to ``rows`` rows (random padding rows, as real padding is
    untrained); ``rows == V`` gives the unpadded model. The first V rows and every other weight are unchanged."""
    config = model.config.to_dict()
    config["vocab_size"] = rows
    with seeded(seed):
        out = LlamaForCausalLM(type(model.config).from_dict(config))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        pad = out.state_dict()[key][V:] * 10  # large enough to matter if it leaked into the loss
        state[key] = torch.cat([state[key], pad]) if rows > V else state[key]
    out.load_state_dict(state)
    return out


def config(tmp_path, **kw):
    return tiny.config(tmp_path, **{"js_mixture": "exact", **kw})


@pytest.fixture(scope="module")
def models():
    teacher, student = tiny.llama(2, seed=0, init=0.15), tiny.llama(1, seed=1, init=0.15)
    return {
        "unpadded": (padded(teacher, V, 0), padded(student, V, 0)),
        "padded": (padded(teacher, V + 9, 2), padded(student, V + 4, 3)),
    }


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("objective", ["kl", "rkl", "js", "tvd"])
def test_padded_heads_give_the_loss_of_the_unpadded_models(tok, models, tmp_path, objective, fused):
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    losses, grads = {}, {}
    for name, (t, s) in models.items():
        args = config(tmp_path / name, objective=objective, fused_divergence=fused)
        trainer = FDistillTrainer(model=s, teacher_model=t, args=args, train_dataset=data, processing_class=tok)
        assert trainer.shared_vocab_size == (None if name == "unpadded" else V)
        batch = trainer.data_collator([data[i] for i in range(8)])
        samples = [list(ids) for ids in reversed(data["teacher_sample_ids"])]  # fixed "student samples"
        batch["student_ids"], batch["student_mask"] = pad_right(samples, tok.pad_token_id)
        s.zero_grad()
        losses[name] = trainer.compute_loss(s, batch)  # fixed student samples: nothing is drawn
        losses[name].backward()
        grads[name] = s.lm_head.weight.grad.clone()
    torch.testing.assert_close(losses["padded"], losses["unpadded"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["padded"][:V], grads["unpadded"], rtol=1e-4, atol=1e-6)
    assert (grads["padded"][V:] == 0).all()  # padding rows are outside the loss


def test_padded_student_never_samples_padding_and_trains(tok, models, tmp_path):
    teacher, student = models["padded"]
    student = padded(tiny.llama(1, seed=1), V + 4, 5)
    with torch.no_grad():
        student.lm_head.weight[V:] = 0.0
        student.lm_head.weight[V:, 0] = 100.0  # padding rows that would win every draw if they were allowed
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    args = config(tmp_path, objective="rkl", max_steps=2)
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    assert trainer.student_generation_config.suppress_tokens == list(range(V, V + 4))
    batch = trainer.data_collator([data[i] for i in range(8)])
    ids, mask = trainer.generate_student_samples(batch["prompt_ids"], batch["prompt_mask"])
    assert mask.any() and ids[mask].max() < V
    trainer.train()
    assert trainer.state.global_step == 2


def test_different_tokenizers_take_the_cross_tokenizer_path(tok, models, tmp_path):
    teacher, student = models["padded"]
    words = [w for w in tok.get_vocab() if w not in ("<pad>", "<s>", "</s>", "<unk>")]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *reversed(words)])}
    backend = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    data = tiny.dataset(4, seed=0)
    with pytest.raises(InputError, match="tokenizers differ"):  # one vocabulary compared token by token: refused
        shared_vocab_size(V, V, tok, other)
    across = FDistillTrainer(  # the trainer compares them on aligned chunks instead (fdistill.lm.cross_batches)
        model=student,
        teacher_model=teacher,
        teacher_tokenizer=other,
        args=config(tmp_path, objective="rkl"),
        train_dataset=data,
        processing_class=tok,
    )
    assert across.cross is not None and across.shared_vocab_size is None
    same = FDistillTrainer(  # the same tokenizer given explicitly: one vocabulary, the padded rows cut off
        model=student,
        teacher_model=teacher,
        teacher_tokenizer=tiny.tokenizer(),
        args=config(tmp_path, objective="rkl"),
        train_dataset=data,
        processing_class=tok,
    )
    assert same.cross is None and same.shared_vocab_size == V
    # a head smaller than the tokenizer: that model was made with another tokenizer
    with pytest.raises(InputError, match="more than the teacher's head"):
        shared_vocab_size(V + 4, V - 2, tok)
    assert shared_vocab_size(V + 4, V + 4, tok) == V + 4  # equal heads: every row, as ever


def test_a_teacher_path_brings_its_tokenizer(tok, models, tmp_path):
    teacher, student = models["padded"]
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    trainer = FDistillTrainer(
        model=student,
        teacher_model=str(tmp_path / "teacher"),
        args=config(tmp_path / "out", objective="rkl"),
        train_dataset=tiny.dataset(4, seed=0),
        processing_class=tok,
    )
    assert trainer.shared_vocab_size == V


def test_first_rows_is_a_view_of_the_head():
    weight = torch.randn(7, 3, requires_grad=True)
    head = LinearHead(weight, torch.zeros(7), scale=2.0).first_rows(5)
    assert head.weight.shape == (5, 3) and head.bias.shape == (5,) and head.scale == 2.0
    head.weight.sum().backward()
    assert (weight.grad[:5] == 1).all() and (weight.grad[5:] == 0).all()
    with pytest.raises(ValueError, match="vocab_size"):
        LinearHead(weight).first_rows(9)
