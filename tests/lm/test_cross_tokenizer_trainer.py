"""FDistillTrainer across tokenizers (issue 28, item 5): tiny Llamas with two different tokenizers train with every
objective that works there, offline and online; identical tokenizers keep the one-tokenizer path; the trainer's
loss on one batch is the cross loss called by hand; each unsupported combination is refused before any work."""

import json

import pytest
import torch
import transformers
from datasets import Dataset
from transformers import LlamaForCausalLM

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.divergences import token_logprobs
from fdistill.errors import InputError
from fdistill.lm.data import TEACHER_TOKENS, DistillCollator, pad_left, score_completions
from fdistill.lm.loading import tokenizer_fingerprint
from fdistill.lm.logits_cache import DESCRIPTION_PREFIX
from fdistill.torch_utils import seeded

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def toks():
    """(student's, teacher's) tokenizers: two different hand-made tokenizers over one alphabet."""
    return tiny.cross_tokenizers()


def strings(n: int, seed: int) -> list[str]:
    """``n`` texts over the tokenizers' alphabet {a, b, space}, 2–6 characters, each starting with a letter."""
    g = torch.Generator().manual_seed(seed)
    return [
        "ab"[int(torch.randint(0, 2, (1,), generator=g))]
        + "".join(
            "ab "[int(i)] for i in torch.randint(0, 3, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)
        )
        for _ in range(n)
    ]


def llama(tokenizer, layers: int, seed: int, init: float = 0.02, dtype=torch.float32) -> LlamaForCausalLM:
    """A tiny Llama over ``tokenizer``'s vocabulary (:func:`fdistill.testing.llama`), in ``dtype``."""
    return tiny.llama(layers, seed, init=init, tokenizer=tokenizer).to(dtype)


def recorded(data, tokenizer):
    """``data`` with the provenance record `fdistill sample` writes, naming ``tokenizer``."""
    data.info.description = DESCRIPTION_PREFIX + json.dumps({"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)})
    return data


@pytest.fixture(scope="module")
def pair(toks):
    """A 2-layer teacher over the teacher's tokenizer and 16 examples with its offline samples (its ids, recorded)."""
    student_tok, teacher_tok = toks
    teacher = llama(teacher_tok, 2, seed=0, init=0.15)
    prompts = strings(16, seed=0)
    data = Dataset.from_dict(
        {
            "prompt": prompts,
            "reference": strings(16, seed=1),
            "teacher_sample_ids": tiny.sample_ids(teacher, teacher_tok, prompts, 8, seed=0),
        }
    )
    return teacher, recorded(data, teacher_tok)


def config(tmp_path, **kw):
    defaults = dict(max_new_tokens=8, per_device_train_batch_size=8, lr_scheduler_type="constant", logging_steps=1)
    return tiny.config(tmp_path / "out", **{**defaults, **kw})


def trainer_for(toks, pair, tmp_path, student=None, **kw):
    student_tok, teacher_tok = toks
    teacher, data = pair
    student = student if student is not None else llama(student_tok, 1, seed=1)
    return FDistillTrainer(
        model=student,
        teacher_model=teacher,
        teacher_tokenizer=teacher_tok,
        args=config(tmp_path, **kw),
        train_dataset=data,
        processing_class=student_tok,
    )


# ----------------------------------------------------------------------------- training


CASES = [
    ("kl", "offline"),
    ("kl", "online"),
    ("rkl", "offline"),
    ("js", "offline"),
    ("js", "online"),
    ("tvd", "offline"),
    ("tvd", "online"),
    ("uld", "offline"),
    ("uld", "online"),
    ("hybrid", "offline"),
    ("hybrid", "online"),
    ("seqkd", "offline"),
]


@pytest.mark.parametrize(("objective", "sampling"), CASES)
def test_trains_across_tokenizers(toks, pair, tmp_path, objective, sampling):
    """A few steps: every loss finite, the student changes, the teacher does not; on fixed data (the offline teacher
    samples) the objective's own loss goes down."""
    trainer = trainer_for(toks, pair, tmp_path, objective=objective, teacher_sampling=sampling, max_steps=12)
    assert trainer.cross is not None
    if objective in ("uld", "hybrid"):  # the model card names the objective and its weight
        from fdistill.lm.hub import save_model_card

        card = save_model_card(trainer, write=False)
        assert trainer.objective.title in card and "uld_weight" in card
    teacher = pair[0]  # seqkd loads none (trainer.teacher is None): it reads the teacher's samples only
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    fixed = sampling == "offline" and objective in ("kl", "uld", "hybrid", "seqkd")
    if fixed:
        first = trainer.evaluate(pair[1])["eval_loss"]
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    if fixed:
        assert trainer.evaluate(pair[1])["eval_loss"] < 0.9 * first
    if "student" in trainer.objective.scores and objective != "hybrid":
        assert "teacher_nll_of_student_samples" in trainer.state.log_history[0]


def test_identical_tokenizers_keep_the_one_tokenizer_path(tok, tmp_path):
    """The student's tokenizer passed again as teacher_tokenizer (another instance): no cross path, and the very same
    losses, bit for bit, as without it."""
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    logs = []
    for teacher_tok in (None, tiny.tokenizer()):
        trainer = FDistillTrainer(
            model=tiny.llama(1, seed=1),
            teacher_model=teacher,
            teacher_tokenizer=teacher_tok,
            args=config(tmp_path, objective="tvd", max_steps=3),
            train_dataset=data,
            processing_class=tok,
        )
        assert trainer.cross is None
        trainer.train()
        logs.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert logs[0] == logs[1]


@pytest.mark.parametrize(
    ("kind", "mixture"), [("kl", "stepwise"), ("rkl", "stepwise"), ("js", "exact"), ("tvd", "stepwise")]
)
def test_the_cross_path_with_one_tokenizer_gives_the_one_tokenizer_loss(toks, tmp_path, monkeypatch, kind, mixture):
    """The cross path forced on with the student's own tokenizer as the teacher's (float64, one batch with teacher and
    student samples): every chunk is one token, and the trainer's loss is the one-tokenizer path's.

    The samples hold no pad token: a sampled special token other than EOS has no bytes and joins the next chunk
    (:mod:`fdistill.lm.cross_tokenizer`), so that chunk is two tokens even with one tokenizer."""
    from tolerances import sum_rtol

    from fdistill.lm.sampling import sample_completions, sampling_config

    tok = toks[0]
    teacher = llama(tok, 2, seed=0, init=0.15, dtype=torch.float64)

    def draw(model, prompt_ids, prompt_mask):
        config = sampling_config(model, tok, max_new_tokens=8)
        config.suppress_tokens = [tok.pad_token_id]
        with seeded(0):
            return sample_completions(model, prompt_ids, prompt_mask, config)

    prompts = strings(8, seed=0)
    data = Dataset.from_dict({"prompt": prompts})
    prompt_batch = DistillCollator(tok, is_encoder_decoder=False)([{"prompt": p} for p in prompts])
    ids, mask = draw(teacher, prompt_batch["prompt_ids"], prompt_batch["prompt_mask"])
    samples = [row[m].tolist() for row, m in zip(ids, mask)]
    data = recorded(data.add_column("teacher_sample_ids", samples), tok)
    student = llama(tok, 1, seed=1, dtype=torch.float64)
    kw = dict(objective=kind, js_mixture=mixture)
    today = FDistillTrainer(
        model=student, teacher_model=teacher, args=config(tmp_path, **kw), train_dataset=data, processing_class=tok
    )
    monkeypatch.setattr("fdistill.lm.trainer.wants_cross", lambda *a: True)
    across = FDistillTrainer(
        model=student,
        teacher_model=teacher,
        teacher_tokenizer=tok,
        args=config(tmp_path, **kw),
        train_dataset=data,
        processing_class=tok,
    )
    assert today.cross is None and across.cross is not None
    rows = [data[i] for i in range(8)]
    batch = across.data_collator(rows)
    if "student" in across.objective.scores:
        drawn = across.cross.sampler(lambda *p: draw(student, *p), "student")(batch["prompt_ids"], batch["prompt_mask"])
        batch["student_ids"], batch["student_mask"] = drawn.ids, drawn.mask
        batch[f"{TEACHER_TOKENS}student_ids"], batch[f"{TEACHER_TOKENS}student_mask"] = drawn.teacher_tokens
    plain = {k: v for k, v in batch.items() if not k.startswith(TEACHER_TOKENS)}
    with torch.no_grad():
        want = today.compute_loss(student, dict(plain))
        got = across.compute_loss(student, dict(batch))
    assert got.item() == pytest.approx(want.item(), rel=sum_rtol(torch.float64, 8 * 16 * len(tok)), abs=1e-12)


# ----------------------------------------------------------------------------- the batches


def test_batches_hold_both_tokenizations(toks, pair, tmp_path):
    """Prompts in each model's own tokenization (its BOS); the offline teacher samples are the teacher's ids as
    stored and the student's re-tokenisation of the same text; online student samples re-tokenised for the teacher."""
    student_tok, teacher_tok = toks
    trainer = trainer_for(toks, pair, tmp_path, objective="tvd")
    rows = [pair[1][i] for i in range(4)]
    batch = trainer.data_collator(rows)
    for i, row in enumerate(rows):
        t_prompt = batch[f"{TEACHER_TOKENS}prompt_ids"][i][batch[f"{TEACHER_TOKENS}prompt_mask"][i]].tolist()
        assert t_prompt == teacher_tok(row["prompt"])["input_ids"]
        s_prompt = batch["prompt_ids"][i][batch["prompt_mask"][i]].tolist()
        assert s_prompt == student_tok(row["prompt"])["input_ids"]
        t_ids = batch[f"{TEACHER_TOKENS}teacher_ids"][i][batch[f"{TEACHER_TOKENS}teacher_mask"][i]].tolist()
        assert t_ids == row["teacher_sample_ids"]
        s_ids = batch["teacher_ids"][i][batch["teacher_mask"][i]].tolist()
        assert _text(student_tok, s_ids) == _text(teacher_tok, t_ids)
        assert (s_ids[-1] == student_tok.eos_token_id) == (t_ids[-1] == teacher_tok.eos_token_id)
    samplers = trainer._samplers()
    drawn = samplers["student"](batch["prompt_ids"], batch["prompt_mask"])
    for i in range(4):
        s_ids = drawn.ids[i][drawn.mask[i]].tolist()
        t_ids = drawn.teacher_tokens[0][i][drawn.teacher_tokens[1][i]].tolist()
        assert _text(student_tok, s_ids) == _text(teacher_tok, t_ids)


def _text(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_online_teacher_samples_come_from_its_own_prompts(toks, pair, tmp_path, monkeypatch):
    """teacher_sampling='online': the teacher generates from its prompt ids (not the student's)."""
    student_tok, teacher_tok = toks
    trainer = trainer_for(toks, pair, tmp_path, objective="kl", teacher_sampling="online")
    seen = []
    generate = trainer.teacher.generate

    def recording(*a, **kw):
        seen.append(kw["input_ids"].clone())
        return generate(*a, **kw)

    monkeypatch.setattr(trainer.teacher, "generate", recording)
    batch = trainer.data_collator([pair[1][i] for i in range(4)])
    inputs = {k: v for k, v in batch.items() if not k.startswith(f"{TEACHER_TOKENS}teacher")}
    inputs = {k: v for k, v in inputs.items() if not k.startswith("teacher")}
    trainer._attach_online_samples(inputs, training=False)
    assert len(seen) == 1 and torch.equal(seen[0], batch[f"{TEACHER_TOKENS}prompt_ids"])
    assert inputs["teacher_ids"].max() < len(student_tok) and f"{TEACHER_TOKENS}teacher_ids" in inputs


# ----------------------------------------------------------------------------- the loss, by hand


@pytest.mark.parametrize("kind", ["kl", "js", "tvd"])
def test_trainer_loss_is_the_cross_loss_by_hand(toks, pair, tmp_path, kind):
    """One batch in float64: the trainer's loss equals cross_f_divergence_loss called on logits scored by hand and
    alignments made by hand with align_batch (student samples given, so nothing is drawn)."""
    from fdistill.lm.cross_divergences import CrossSampledSequences, cross_f_divergence_loss
    from fdistill.lm.cross_tokenizer import align_batch, retokenize, vocab_map

    student_tok, teacher_tok = toks
    teacher, data = pair
    teacher = teacher.to(torch.float64)
    student = llama(student_tok, 1, seed=1, dtype=torch.float64)
    trainer = FDistillTrainer(
        model=student,
        teacher_model=teacher,
        teacher_tokenizer=teacher_tok,
        args=config(tmp_path, objective=kind),
        train_dataset=data,
        processing_class=student_tok,
    )
    rows = [data[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    s_ids, s_mask = batch["teacher_ids"][[1, 0, 3, 2]], batch["teacher_mask"][[1, 0, 3, 2]]  # "student samples"
    batch["student_ids"], batch["student_mask"] = s_ids, s_mask
    t_ids, t_mask = retokenize(student_tok, teacher_tok, s_ids, s_mask)
    batch[f"{TEACHER_TOKENS}student_ids"], batch[f"{TEACHER_TOKENS}student_mask"] = t_ids, t_mask
    got = trainer.compute_loss(student, dict(batch))

    def side(name):
        s_ids, s_mask = batch[f"{name}_ids"], batch[f"{name}_mask"]
        t_ids, t_mask = batch[f"{TEACHER_TOKENS}{name}_ids"], batch[f"{TEACHER_TOKENS}{name}_mask"]
        pad_s, pad_t = student_tok.pad_token_id, teacher_tok.pad_token_id
        s_logits, s_labels, _ = score_completions(
            student, batch["prompt_ids"], batch["prompt_mask"], s_ids, s_mask, pad_token_id=pad_s
        )
        prompts = [teacher_tok(r["prompt"])["input_ids"] for r in rows]
        t_prompt, t_prompt_mask = pad_left(prompts, pad_t)
        t_logits, t_labels, _ = score_completions(teacher, t_prompt, t_prompt_mask, t_ids, t_mask, pad_token_id=pad_t)
        alignment = align_batch(student_tok, teacher_tok, s_ids, s_mask, t_ids, t_mask)
        count = torch.tensor(float(s_mask.any(-1).sum()))
        return CrossSampledSequences(
            student_logits=s_logits,
            teacher_logits=t_logits,
            student_labels=s_labels,
            teacher_labels=t_labels,
            alignment=alignment,
            num_items_in_batch=count,
        )

    sides = {n: side(n) for n in trainer.objective.scores}
    want = cross_f_divergence_loss(
        kind,
        vocab_map=vocab_map(student_tok, teacher_tok),
        teacher_samples=sides.get("teacher"),
        student_samples=sides.get("student"),
    )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want.loss, rtol=1e-10, atol=1e-12)
    if "student" in sides:  # the logged teacher NLL of the student samples: in the teacher's own tokens
        s = sides["student"]
        nll = -token_logprobs(s.teacher_logits, s.teacher_labels).sum(-1).mean()
        logged = trainer._metrics["train" if student.training else "eval"]["teacher_nll_of_student_samples"][-1]
        assert logged == pytest.approx(nll.item(), rel=1e-6)


# ----------------------------------------------------------------------------- refusals, before any work


REFUSED = [
    (dict(objective="kl", fused_divergence=True), "fused_divergence"),
    (dict(objective="engine"), "engine"),
    (dict(objective="predistill"), "predistill"),
    (dict(objective="tvd", loss_reduction="token"), "loss_reduction='token'"),
]


@pytest.mark.parametrize(("settings", "named"), REFUSED)
def test_unsupported_combinations_are_refused_before_any_work(toks, pair, tmp_path, settings, named):
    with pytest.raises(InputError, match=named) as error:
        trainer_for(toks, pair, tmp_path, **settings)
    assert "across tokenizers fdistill trains" in str(error.value)  # what is supported
    assert not (tmp_path / "out").exists()


def test_stored_topk_columns_are_refused(toks, pair, tmp_path):
    student_tok, teacher_tok = toks
    with pytest.raises(InputError, match="teacher_topk_columns"):
        FDistillTrainer(
            model=llama(student_tok, 1, seed=1),
            teacher_tokenizer=teacher_tok,
            args=config(tmp_path, objective="kl", teacher_topk_columns=True),
            train_dataset=pair[1],
            processing_class=student_tok,
        )


def test_teacher_sample_ids_must_be_the_teachers(toks, pair, tmp_path):
    """Ids without a record of their tokenizer, or made with the student's, are refused; text needs no record."""
    student_tok, teacher_tok = toks
    teacher, data = pair
    unrecorded = data.select(range(len(data)))
    unrecorded.info.description = ""
    for bad, why in ((unrecorded, "no record"), (recorded(data.select(range(16)), student_tok), "student's tokenizer")):
        with pytest.raises(InputError, match=why):
            trainer_for(toks, (teacher, bad), tmp_path, objective="kl")
    text = unrecorded.map(lambda r: {"teacher_text": _text(teacher_tok, r["teacher_sample_ids"])})
    trainer = trainer_for(toks, (teacher, text), tmp_path, objective="kl", teacher_sample_column="teacher_text")
    assert trainer.data_collator([text[0]])["teacher_mask"].any()


def test_a_custom_collator_and_an_encoder_decoder_are_refused(toks, pair, tmp_path):
    student_tok, teacher_tok = toks
    teacher, data = pair
    with pytest.raises(InputError, match="data_collator"):
        FDistillTrainer(
            model=llama(student_tok, 1, seed=1),
            teacher_model=teacher,
            teacher_tokenizer=teacher_tok,
            args=config(tmp_path, objective="kl"),
            train_dataset=data,
            processing_class=student_tok,
            data_collator=lambda rows: rows,
        )
    with pytest.raises(InputError, match="encoder–decoder"):
        FDistillTrainer(
            model=tiny.bart(1, seed=1),
            teacher_model=tiny.bart(1, seed=0),
            teacher_tokenizer=teacher_tok,
            args=config(tmp_path, objective="kl"),
            train_dataset=data,
            processing_class=student_tok,
        )


def test_prompts_as_token_ids_are_refused(toks, pair, tmp_path):
    """Token-id prompts are one tokenizer's: refused before any work (each model must tokenise the text itself)."""
    student_tok, _ = toks
    teacher, data = pair
    as_ids = data.map(lambda r: {"prompt": student_tok(r["prompt"])["input_ids"]})
    with pytest.raises(InputError, match="token ids, which are one tokenizer's"):
        trainer_for(toks, (teacher, as_ids), tmp_path, objective="kl")


# ----------------------------------------------------------------------------- a served teacher across tokenizers


@pytest.mark.parametrize("objective", ["kl", "tvd"])
def test_a_served_teacher_across_tokenizers_is_the_in_process_one_at_full_vocabulary(toks, pair, tmp_path, objective):
    """teacher_server + teacher_tokenizer: the server is sent the teacher's token ids (its tokenizer checked against
    teacher_tokenizer) and at K = its vocabulary the loss is the in-process teacher's."""
    from fake_vllm import FakeVLLM
    from tolerances import sum_rtol

    student_tok, teacher_tok = toks
    teacher, data = pair
    student = llama(student_tok, 1, seed=1)
    local = trainer_for(toks, pair, tmp_path / "local", student=student, objective=objective)
    batch = local.data_collator([data[i] for i in range(8)])
    if "student" in local.objective.scores:
        torch.manual_seed(0)
        drawn = local._samplers()["student"](batch["prompt_ids"], batch["prompt_mask"])
        batch["student_ids"], batch["student_mask"] = drawn.ids, drawn.mask
        batch[f"{TEACHER_TOKENS}student_ids"], batch[f"{TEACHER_TOKENS}student_mask"] = drawn.teacher_tokens
    with torch.no_grad():
        reference = local.compute_loss(student, dict(batch)).item()
    with FakeVLLM(teacher, teacher_tok) as fake:
        served = FDistillTrainer(
            model=student,
            teacher_tokenizer=teacher_tok,
            args=config(tmp_path / "served", objective=objective, teacher_server=fake.url, teacher_server_topk=64),
            train_dataset=data,
            processing_class=student_tok,
        )
        assert served.teacher is None and served.cross is not None
        with torch.no_grad():
            got = served.compute_loss(student, dict(batch)).item()
        sent = [p for body in fake.bodies if body.get("prompt_logprobs") for p in body["prompt"]]
        first = teacher_tok(data[0]["prompt"])["input_ids"] + data[0]["teacher_sample_ids"]  # the teacher's ids
        assert first in sent
    assert got == pytest.approx(reference, rel=sum_rtol(torch.float32, 8 * 16 * len(teacher_tok)))


@pytest.mark.parametrize("overlap", [False, True])
def test_student_samples_through_a_student_server_across_tokenizers(toks, pair, tmp_path, overlap):
    """student_server: the served student's samples are re-tokenised for the teacher. Greedy, training takes the very
    steps of in-process sampling (bit for bit); sampled with rollout_overlap (drawn ahead, reused), it trains with
    importance weights."""
    from fake_vllm import FakeVLLM

    student_tok, _ = toks
    kw = dict(objective="rkl", max_steps=3, student_do_sample=False)
    if overlap:
        kw.update(student_do_sample=True, steps_per_generation=2, rollout_overlap=True)
    runs = {}
    with FakeVLLM(llama(student_tok, 1, seed=9), student_tok, name="student") as fake:
        for where in ("served",) if overlap else ("local", "served"):
            extra = {"student_server": fake.url, "student_server_timeout": 4.0} if where == "served" else {}
            trainer = trainer_for(toks, pair, tmp_path / where, **kw, **extra)
            trainer.train()
            runs[where] = ([h["loss"] for h in trainer.state.log_history if "loss" in h], trainer)
        assert len([b for b in fake.bodies if "seed" in b]) >= 3 * 8  # the student samples came from the server
    losses, trainer = runs["served"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    if overlap:
        assert any(h.get("rollout/staleness", 0) >= 1 for h in trainer.state.log_history)
    else:
        assert losses == runs["local"][0]
        for a, b in zip(trainer.model.parameters(), runs["local"][1].model.parameters()):
            assert torch.equal(a, b)


def test_a_served_teacher_with_another_tokenizer_than_teacher_tokenizer_is_refused(toks, pair, tmp_path):
    from fake_vllm import FakeVLLM

    student_tok, teacher_tok = toks
    teacher, data = pair
    with FakeVLLM(llama(student_tok, 1, seed=3), student_tok) as fake:
        with pytest.raises(InputError, match="differs from teacher_tokenizer"):
            FDistillTrainer(
                model=llama(student_tok, 1, seed=1),
                teacher_tokenizer=teacher_tok,
                args=config(tmp_path, objective="kl", teacher_server=fake.url),
                train_dataset=data,
                processing_class=student_tok,
            )


# ----------------------------------------------------------------------------- the train command


def test_the_train_command_trains_a_student_with_its_own_tokenizer(toks, pair, tmp_path):
    """`fdistill train` with `teacher:` and `student:` folders whose tokenizers differ: each keeps its own, and the
    run records both (the offline teacher samples read from the saved dataset with its provenance record)."""
    import yaml

    from fdistill.cli import main

    student_tok, teacher_tok = toks
    teacher, data = pair
    for name, model, tokenizer in (
        ("teacher", teacher, teacher_tok),
        ("student", llama(student_tok, 1, 1), student_tok),
    ):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    data.save_to_disk(str(tmp_path / "samples"))
    values = dict(
        teacher=str(tmp_path / "teacher"),
        student=str(tmp_path / "student"),
        train_data=str(tmp_path / "samples"),
        output_dir=str(tmp_path / "run"),
        objective="kl",
        max_steps=2,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
    )
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(values))
    main(["train", str(tmp_path / "recipe.yaml")])
    record = json.loads((tmp_path / "run" / "checkpoint-2" / "fdistill_run.json").read_text())
    assert record["teacher_tokenizer"] == tokenizer_fingerprint(teacher_tok)
    assert record["tokenizer"] == tokenizer_fingerprint(student_tok)


def test_hybrid_with_one_tokenizer_is_cross_entropy_plus_the_kl(toks, tmp_path):
    """uld and hybrid always take the cross path; with one tokenizer every chunk is one token, so hybrid is
    CE + uld_weight · KL(p‖q) on the teacher samples: seqkd's loss plus uld_weight times kl's (float64)."""
    from tolerances import sum_rtol

    tok = toks[0]
    teacher = llama(tok, 2, seed=0, init=0.15, dtype=torch.float64)
    prompts = strings(8, seed=0)
    samples = [s for s in tiny.sample_ids(teacher, tok, prompts, 8, 0)]
    samples = [[t for t in s if t != tok.pad_token_id] or [tok.eos_token_id] for s in samples]  # no zero-width token
    data = recorded(Dataset.from_dict({"prompt": prompts, "teacher_sample_ids": samples}), tok)
    student = llama(tok, 1, seed=1, dtype=torch.float64)
    losses = {}
    for objective in ("hybrid", "seqkd", "kl"):
        trainer = FDistillTrainer(
            model=student,
            teacher_model=teacher,
            args=config(tmp_path, objective=objective, uld_weight=0.7),
            train_dataset=data,
            processing_class=tok,
        )
        assert (trainer.cross is not None) == (objective == "hybrid")
        with torch.no_grad():
            losses[objective] = trainer.compute_loss(student, trainer.data_collator([data[i] for i in range(8)])).item()
    want = losses["seqkd"] + 0.7 * losses["kl"]
    assert losses["hybrid"] == pytest.approx(want, rel=sum_rtol(torch.float64, 8 * 8 * len(tok)))


@pytest.mark.parametrize(
    "settings",
    [
        dict(objective="rkl"),
        dict(objective="tvd", teacher_sampling="online", gradient_accumulation_steps=2, per_device_train_batch_size=4),
    ],
)
def test_reused_student_samples_are_reweighted_across_tokenizers(toks, pair, tmp_path, settings):
    """steps_per_generation=2: the second step scores the first step's samples (in both tokenizations), weighted;
    online teacher samples are drawn for the whole group from the teacher's own prompts, padded with its pad id."""
    trainer = trainer_for(toks, pair, tmp_path, steps_per_generation=2, max_steps=4, **settings)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert logs[1]["rollout/staleness"] == 1 and 0 < logs[1]["rollout/ess"] <= 1


def test_samples_trained_on_again_across_tokenizers_keep_the_teachers_numbers(toks, pair, tmp_path):
    """num_iterations=2: the second step of each pair trains on the first's samples (both tokenizations) with the
    teacher's numbers it kept — the same losses as recomputing them — and weights them."""
    runs = {}
    for keep in (True, False):
        trainer = trainer_for(toks, pair, tmp_path / str(keep), objective="tvd", num_iterations=2, max_steps=4)
        if not keep:
            trainer._kept_teacher = lambda: None
        trainer.train()
        runs[keep] = [h for h in trainer.state.log_history if "loss" in h]
    logs = runs[True]
    assert [h["rollout/staleness"] for h in logs] == [0, 1, 0, 1] and 0 < logs[1]["rollout/ess"] < 1
    assert [h["loss"] for h in logs] == [h["loss"] for h in runs[False]]


def test_batch_memory_counts_the_logits_across_tokenizers(monkeypatch):
    """Nothing is fused across tokenizers, so a batch whose logits exceed all memory is refused even where the
    settings would fuse (fused_divergence unset on CUDA, or set)."""
    import fdistill.checks
    from fdistill.lm.config import DistillArguments

    monkeypatch.setattr(fdistill.checks, "machine_memory_bytes", lambda: 2**30)
    settings = DistillArguments(objective="kl", max_target_length=64, fused_divergence=True)
    args = type("Args", (), {"per_device_train_batch_size": 65, "per_device_eval_batch_size": 8})()
    settings.check_batch_memory(2**16, args)  # would be fused: not bounded by the logits
    with pytest.raises(InputError, match="per_device_train_batch_size=65 cannot fit"):
        settings.check_batch_memory(2**16, args, may_fuse=False)
