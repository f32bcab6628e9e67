"""FDistillTrainer end to end on tiny in-process models: every objective, both architecture families."""

import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

from fdistill import DistillArguments, FDistillConfig, FDistillMixin, FDistillTrainer
from fdistill import testing as tiny
from fdistill.evaluation.metrics import sequence_divergences

transformers.logging.set_verbosity_error()
ARCHS = ["llama", "bart"]
DIVERGENCE_OF = {"kl": "kl", "rkl": "rkl", "engine": "r_llh", "js": "js", "tvd": "tvd_bound"}


@pytest.fixture(scope="module", params=ARCHS)
def setup(request, tok):
    arch = request.param
    teacher = getattr(tiny, arch)(2, seed=0, init=0.15)
    return arch, teacher, tiny.dataset(48, seed=0, teacher=teacher, tok=tok)


def config(tmp_path, **kw):
    defaults = {"max_new_tokens": 8, "per_device_train_batch_size": 8, "lr_scheduler_type": "constant"}
    return tiny.config(tmp_path, **{**defaults, "logging_steps": 5, **kw})


@pytest.mark.parametrize("objective", ["kl", "rkl", "js", "tvd", "engine", "seqkd", "mle", "predistill"])
def test_objective_reduces_its_divergence(setup, tok, tmp_path, objective):
    arch, teacher, data = setup
    student = getattr(tiny, arch)(1, seed=1)
    args = config(tmp_path, objective=objective, max_steps=40, js_mixture="exact")
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    prompts = tiny.prompts(24, seed=7)
    if objective in DIVERGENCE_OF:
        key = DIVERGENCE_OF[objective]
        before = sequence_divergences(student, teacher, tok, prompts, num_samples=2, max_new_tokens=8)[key]
        trainer.train()
        after = sequence_divergences(student, teacher, tok, prompts, num_samples=2, max_new_tokens=8)[key]
        assert after < 0.9 * before, (objective, key, before, after)
    else:  # baselines (MLE, SeqKD, pre-distillation) fit fixed targets: their own training loss goes down
        before = trainer.evaluate(data)["eval_loss"]
        trainer.train()
        after = trainer.evaluate(data)["eval_loss"]
        assert after < 0.8 * before, (objective, before, after)
    if trainer.teacher is not None:
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_student_samples_online_and_teacher_never_trains(tok, tmp_path, monkeypatch):
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    student = tiny.llama(1, seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    calls, modes = [], []
    original_generate = student.generate

    def counting_generate(*a, **kw):
        calls.append(kw["input_ids"].shape[0])
        modes.append(student.training)
        return original_generate(*a, **kw)

    monkeypatch.setattr(student, "generate", counting_generate)
    real_train = teacher.train
    monkeypatch.setattr(
        teacher, "train", lambda mode=True: pytest.fail("teacher put in train mode") if mode else real_train(False)
    )
    args = config(tmp_path, objective="tvd", max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    assert calls == [4] * 6  # a fresh sample per prompt in every micro-batch of every step
    assert modes == [False] * 6  # sampled in eval mode (dropout off)
    assert student.training  # and put back in train mode
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for g in trainer.optimizer.param_groups for p in g["params"])
    logged = trainer.state.log_history[0]
    for key in (
        "loss_on_teacher_samples",
        "loss_on_student_samples",
        "student_entropy",
        "teacher_nll_of_student_samples",
    ):
        assert key in logged and logged[key] == logged[key]


@pytest.mark.parametrize("objective,reduction", [("kl", "token"), ("rkl", "sequence"), ("tvd", "token")])
def test_gradient_accumulation_is_exact(tok, tmp_path, objective, reduction):
    """One step of batch 8 equals one step of 2 × 4 accumulated (greedy student samples: deterministic)."""
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=3, teacher=teacher, tok=tok)
    params = []
    for bs, ga in ((8, 1), (4, 2)):
        student = tiny.llama(1, seed=1)
        args = config(
            tmp_path / f"{bs}",
            objective=objective,
            loss_reduction=reduction,
            max_steps=1,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            student_do_sample=False,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=1e9,
        )
        FDistillTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
        ).train()
        params.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    start = torch.cat([p.detach().flatten() for p in tiny.llama(1, seed=1).parameters()])
    assert (params[0] - start).abs().max() > 1e-3  # the step did something
    torch.testing.assert_close(params[0], params[1], rtol=1e-4, atol=1e-5)


def test_resume_equals_uninterrupted(tok, tmp_path):
    teacher = tiny.bart(2, seed=0, init=0.15)
    data = tiny.dataset(24, seed=0, teacher=teacher, tok=tok)
    kw = dict(objective="js", max_steps=6, per_device_train_batch_size=4, save_strategy="steps", save_steps=3)

    full = tiny.bart(1, seed=1)
    FDistillTrainer(
        model=full, teacher_model=teacher, args=config(tmp_path / "a", **kw), train_dataset=data, processing_class=tok
    ).train()
    resumed = tiny.bart(1, seed=5)  # different init: everything must come from the checkpoint
    FDistillTrainer(
        model=resumed,
        teacher_model=teacher,
        args=config(tmp_path / "b", **kw),
        train_dataset=data,
        processing_class=tok,
    ).train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # The checkpoint records what it was trained with; a resume under another objective or teacher is refused.
    from fdistill.errors import InputError

    checkpoint = str(tmp_path / "a" / "checkpoint-3")
    for changed, fragment in [
        (dict(objective="tvd"), r"objective='js' then, 'tvd' now"),
        (dict(loss_temperature=2.0), r"loss_temperature=1.0 then, 2.0 now"),
    ]:
        trainer = FDistillTrainer(
            model=tiny.bart(1, seed=5),
            teacher_model=teacher,
            processing_class=tok,
            args=config(tmp_path / "c", **{**kw, **changed}),
            train_dataset=data,
        )
        with pytest.raises(InputError, match=rf"checkpoint .*checkpoint-3' was trained differently: {fragment}"):
            trainer.train(resume_from_checkpoint=checkpoint)
    other_teacher = tiny.bart(2, seed=3, init=0.15)
    trainer = FDistillTrainer(
        model=tiny.bart(1, seed=5),
        teacher_model=other_teacher,
        processing_class=tok,
        args=config(tmp_path / "a", **kw),
        train_dataset=data,
    )
    with pytest.raises(InputError, match=r"another teacher \(fingerprint tensors-sha256:"):
        trainer.train(resume_from_checkpoint=True)  # True: the newest checkpoint in output_dir
    assert trainer.state.global_step == 0  # refused before any work


def test_mixin_in_a_users_own_trainer(tok, tmp_path):
    class MyTrainer(FDistillMixin, Trainer):
        pass

    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    student = tiny.llama(1, seed=1)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        logging_steps=1,
    )
    trainer = MyTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        distill_args=DistillArguments(objective="js"),
        train_dataset=data,
        processing_class=tok,
    )
    trainer.train()
    assert "loss_on_student_samples" in trainer.state.log_history[0]


def test_evaluate_reports_the_objective(tok, tmp_path):
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    trainer = FDistillTrainer(
        model=tiny.llama(1, seed=1),
        teacher_model=teacher,
        args=config(tmp_path, objective="tvd"),
        train_dataset=data,
        eval_dataset=data,
        processing_class=tok,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0 and "eval_loss_on_student_samples" in metrics


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(vocab=True), "made with another tokenizer"),  # (heads padded past the tokenizer: test_padded_vocab)
        (dict(drop="teacher_sample_ids"), "lacks column"),
        (dict(empty=True), "is empty"),
        (dict(blank_targets=True), "all labels"),
        (dict(no_teacher=True), "needs a teacher"),
    ],
)
def test_bad_input_fails_before_training(tok, tmp_path, change, message):
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    if "drop" in change:
        data = data.remove_columns(change["drop"])
    if change.get("empty"):
        data = data.select([])
    if change.get("blank_targets"):
        data = data.map(lambda x: {"teacher_sample_ids": []})
    if change.get("vocab"):
        teacher.resize_token_embeddings(tiny.VOCAB - 2)
    with pytest.raises(ValueError, match=message):
        FDistillTrainer(
            model=tiny.llama(1, seed=1),
            teacher_model=None if change.get("no_teacher") else teacher,
            args=config(tmp_path, objective="kl"),
            train_dataset=data,
            processing_class=tok,
        )
    assert not any(tmp_path.iterdir())  # nothing written


def test_config_validation_names_the_value_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="objective='jsd'.*choose one of"):
        FDistillConfig(output_dir=str(tmp_path), objective="jsd")
    with pytest.raises(ValueError, match="js_beta=1.0"):
        FDistillConfig(output_dir=str(tmp_path), js_beta=1.0)
    with pytest.raises(ValueError, match="student_num_beams=4.*student_do_sample=False"):
        FDistillConfig(output_dir=str(tmp_path), student_num_beams=4)
    args = FDistillConfig(output_dir=str(tmp_path), objective="rkl", loss_temperature=2.0)
    assert args.needs_student_samples and not args.needs_teacher_samples and args.loss_temperature == 2.0


def test_lora_student_trains_saves_and_merges(tok, tmp_path):
    from peft import PeftModel

    from fdistill.lm.student import merge_lora, wrap_with_lora

    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    student = wrap_with_lora(tiny.llama(1, seed=1), r=4, alpha=8)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    args = config(tmp_path, objective="tvd", max_steps=3, per_device_train_batch_size=4)
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    params = dict(student.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in lora.items() if "lora_B" in n)
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    reloaded = PeftModel.from_pretrained(tiny.llama(1, seed=1), str(tmp_path / "adapter"))
    ids = torch.randint(4, tiny.VOCAB, (2, 6))
    student.eval()
    torch.testing.assert_close(reloaded(ids).logits, student(ids).logits)
    merged = merge_lora(student)
    torch.testing.assert_close(merged(ids).logits, reloaded(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_predistill_matches_hidden_states_of_copied_layers(tok, tmp_path, arch):
    from fdistill.lm.student import create_student_from_teacher

    teacher = getattr(tiny, arch)(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    layers = {"layers": [1]} if arch == "llama" else {"encoder_layers": [1], "decoder_layers": [1]}
    student = create_student_from_teacher(teacher, **layers)
    args = config(tmp_path, objective="predistill", max_steps=20, predistill_alpha_hidden=1.0, logging_steps=1)
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    hidden = [h["loss_hidden"] for h in trainer.state.log_history if "loss_hidden" in h]
    assert len(hidden) == 20 and all(h == h and h >= 0 for h in hidden)
    assert sum(hidden[-5:]) < sum(hidden[:5])


def test_compute_metrics_on_generated_replies(tok, tmp_path):
    from fdistill.evaluation.text_metrics import compute_metrics_fn

    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    args = config(tmp_path, objective="kl", predict_with_generate=True, per_device_eval_batch_size=4)
    trainer = FDistillTrainer(
        model=tiny.llama(1, seed=1),
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        processing_class=tok,
        compute_metrics=compute_metrics_fn(tok, metrics=("bleu", "rouge", "distinct")),
    )
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_bleu", "eval_rouge1", "eval_distinct1"):
        assert key in metrics and metrics[key] == metrics[key]
    assert 0 <= metrics["eval_bleu"] <= 100


def _one_sgd_step(tok, out_dir, arch, teacher, data, **settings):
    """One greedy-sample SGD step (lr 1, no clipping) of a fresh 1-layer student: the trainer, the student's weights
    after it (flattened) and the step's log."""
    student = getattr(tiny, arch)(1, seed=1)
    args = config(
        out_dir,
        max_steps=1,
        logging_steps=1,
        student_do_sample=False,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=1e9,
        **settings,
    )
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    params = torch.cat([p.detach().flatten() for p in student.parameters()])
    return trainer, params, next(h for h in trainer.state.log_history if "loss" in h)


def _assert_same_step(arch, before, after):
    """Two runs of :func:`_one_sgd_step` moved the student (the first one did move it) to the same weights and
    logged the same loss and sample metrics, to float32 rounding of a different summation order."""
    (_, params_a, log_a), (_, params_b, log_b) = before, after
    start = torch.cat([p.detach().flatten() for p in getattr(tiny, arch)(1, seed=1).parameters()])
    assert (params_a - start).abs().max() > 1e-3
    torch.testing.assert_close(params_b, params_a, rtol=1e-4, atol=1e-5)
    assert log_b["loss"] == pytest.approx(log_a["loss"], rel=1e-4)
    for key, value in log_a.items():
        if key.startswith(("loss_on", "student_", "teacher_nll")):
            assert log_b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(
    "arch,objective,mixture",
    [("llama", "js", "exact"), ("bart", "tvd", "stepwise"), ("t5", "rkl", "stepwise"), ("gpt2", "kl", "stepwise")],
)
def test_fused_divergence_step_equals_the_logits_step(tok, tmp_path, arch, objective, mixture):
    """fused_divergence=True (hidden states + LM heads, no logits) takes the same optimizer step and logs the same."""
    teacher = getattr(tiny, arch)(2, seed=0)
    data = tiny.dataset(8, seed=3, teacher=teacher, tok=tok)
    runs = []
    for fused in (False, True):
        settings = dict(objective=objective, js_mixture=mixture, fused_divergence=fused, fused_chunk_size=7)
        runs.append(_one_sgd_step(tok, tmp_path / str(fused), arch, teacher, data, **settings))
        assert runs[-1][0]._heads_checked == fused  # the fused path ran (and checked both heads) only when asked
    _assert_same_step(arch, *runs)


@pytest.mark.parametrize("arch,objective", [("llama", "tvd"), ("bart", "js")])
def test_per_set_logits_step_equals_the_joined_logits_step(tok, tmp_path, arch, objective, monkeypatch):
    """Each set's logits from the checked LM head (``fdistill.lm.scoring.split_head``, the default for both models)
    take the same optimizer step and log the same as the model's joined logits sliced per set."""
    from fdistill.lm import trainer as trainer_module

    teacher = getattr(tiny, arch)(2, seed=0)
    data = tiny.dataset(8, seed=3, teacher=teacher, tok=tok)
    runs = []
    for split in (False, True):
        with monkeypatch.context() as m:
            if not split:
                m.setattr(trainer_module, "split_head", lambda *a, **k: None)
            runs.append(_one_sgd_step(tok, tmp_path / str(split), arch, teacher, data, objective=objective))
        assert runs[-1][0]._split_heads == {"student": split, "teacher": split}
    _assert_same_step(arch, *runs)


def test_fused_divergence_under_ddp_turns_the_unused_parameter_search_off(tok, tmp_path, monkeypatch):
    """The fused path applies the LM head outside the forward: DDP's unused-parameter search is turned off when unset
    (the two-process run is in tests/cli/test_cli.py), and set to True under several processes it is refused before
    any work, naming the fix."""
    from fdistill import FDistillConfig

    teacher = tiny.llama(2, seed=0)
    data = tiny.dataset(8, seed=3, teacher=teacher, tok=tok)

    def build(**settings):
        args = config(tmp_path, **{"objective": "kl", "max_steps": 1, "fused_divergence": True, **settings})
        return FDistillTrainer(
            model=tiny.llama(1, seed=1), teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
        )

    def find_unused(trainer):
        return trainer.accelerator.ddp_handler.find_unused_parameters

    assert find_unused(build()) is False
    assert find_unused(build(fused_divergence=False)) is True  # the Trainer's default stays for the logits path
    monkeypatch.setattr(FDistillConfig, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match="ddp_find_unused_parameters=False"):  # InputError is a ValueError
        build(ddp_find_unused_parameters=True)


def test_fused_divergence_refuses_baselines(tmp_path):
    with pytest.raises(ValueError, match="fused_divergence"):
        config(tmp_path, objective="engine", fused_divergence=True)


def test_online_teacher_sampling_needs_no_teacher_column(tok, tmp_path, monkeypatch):
    """teacher_sampling='online' draws teacher samples every step (the paper's Table 4 baseline) from the teacher."""
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=3, teacher=teacher, tok=tok).remove_columns(["teacher_sample_ids"])
    calls = []
    original = FDistillTrainer.generate_teacher_samples

    def counting(self, prompt_ids, prompt_mask):
        calls.append(prompt_ids.shape[0])
        return original(self, prompt_ids, prompt_mask)

    monkeypatch.setattr(FDistillTrainer, "generate_teacher_samples", counting)
    args = config(
        tmp_path,
        objective="js",
        teacher_sampling="online",
        max_steps=3,
        logging_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    trainer = FDistillTrainer(
        model=tiny.llama(1, seed=1), teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
    )
    trainer.train()
    assert calls == [4] * 6  # one teacher sample per prompt, for every micro-batch of every step
    logged = [h for h in trainer.state.log_history if "loss_on_teacher_samples" in h]
    assert len(logged) == 3 and all(h["loss_on_teacher_samples"] > 0 for h in logged)
    with pytest.raises(ValueError, match="teacher_sample_column"):  # offline (the default) still needs the column
        FDistillTrainer(
            model=tiny.llama(1, seed=1),
            teacher_model=teacher,
            args=config(tmp_path, objective="js"),
            train_dataset=data,
            processing_class=tok,
        )
    with pytest.raises(ValueError, match="teacher_sampling"):
        config(tmp_path, objective="js", teacher_sampling="sometimes")


def test_stored_topk_teacher_logprobs_replace_the_teacher_forward(tok, tmp_path):
    """KL from stored top-k log-probabilities (no teacher model): with k = V it is exactly the teacher-forward step."""
    from fdistill.lm.sampling import OfflineSamplingSettings, sample_offline

    teacher = tiny.llama(2, seed=0, init=0.15)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    settings = OfflineSamplingSettings(max_new_tokens=8, batch_size=4, topk_logprobs=vocab)
    data = sample_offline(
        teacher, tok, tiny.dataset(8, seed=3), str(tmp_path / "s"), settings, teacher_id="tiny", show_progress=False
    )
    params = []
    for topk in (False, True):
        student = tiny.llama(1, seed=1)
        args = config(
            tmp_path / str(topk),
            objective="kl",
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=1e9,
            teacher_topk_columns=topk,
        )
        trainer = FDistillTrainer(
            model=student, teacher_model=None if topk else teacher, args=args, train_dataset=data, processing_class=tok
        )
        assert (trainer.teacher is None) == topk  # no teacher model is loaded with stored log-probabilities
        trainer.train()
        params.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    start = torch.cat([p.detach().flatten() for p in tiny.llama(1, seed=1).parameters()])
    assert (params[0] - start).abs().max() > 1e-3
    torch.testing.assert_close(params[1], params[0], rtol=1e-4, atol=1e-5)  # stored values are rounded to 1e-6

    small = sample_offline(
        teacher,
        tok,
        tiny.dataset(8, seed=3),
        str(tmp_path / "s3"),
        OfflineSamplingSettings(max_new_tokens=8, batch_size=4, topk_logprobs=3),
        teacher_id="tiny",
        show_progress=False,
    )
    args = config(tmp_path / "k3", objective="kl", max_steps=2, teacher_topk_columns=True)
    FDistillTrainer(model=tiny.llama(1, seed=1), args=args, train_dataset=small, processing_class=tok).train()
    with pytest.raises(ValueError, match="topk-logprobs"):  # a dataset without the columns is refused up front
        FDistillTrainer(
            model=tiny.llama(1, seed=1),
            args=args,
            train_dataset=tiny.dataset(8, seed=3, teacher=teacher, tok=tok),
            processing_class=tok,
        )
    with pytest.raises(ValueError, match="teacher_topk_columns"):
        config(tmp_path, objective="js", teacher_topk_columns=True)


# ----------------------------------------------------------------------------- non-finite values (issue 15, item 1)


def _break(model, where: str):
    """NaN in every logit (``"all"``) or in one vocabulary entry's logit (``"entry"``) of a tiny Llama."""
    with torch.no_grad():
        if where == "all":
            model.model.norm.weight.fill_(float("nan"))
        else:
            model.lm_head.weight[7].fill_(float("nan"))
    return model


@pytest.mark.parametrize(
    "objective, where, side",
    [
        ("kl", "all", "teacher samples"),
        ("rkl", "entry", "student samples"),
        ("js", "entry", "teacher samples"),
        ("tvd", "all", "teacher samples"),
        ("engine", "entry", "student samples"),
        ("predistill", "entry", "references"),
    ],
)
def test_nonfinite_teacher_stops_training_at_once(tok, tmp_path, objective, where, side):
    """A broken teacher never trains silently: the first step raises, naming the step, the model and the samples."""
    from fdistill.errors import NonFiniteError

    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    student = tiny.llama(1, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    args = config(tmp_path, objective=objective, max_steps=3, logging_steps=1)
    trainer = FDistillTrainer(
        model=student, teacher_model=_break(teacher, where), args=args, train_dataset=data, processing_class=tok
    )
    with pytest.raises(
        NonFiniteError,
        match=rf"training step 1, micro-batch 1: the teacher's logits on the {side} "
        r"hold NaN or \+inf at \d+ of \d+ scored positions; likely cause: the teacher",
    ):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # no step was applied


def test_nonfinite_student_and_fused_path_are_named(tok, tmp_path):
    from fdistill.errors import NonFiniteError

    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    args = config(tmp_path, objective="kl", max_steps=1)
    trainer = FDistillTrainer(
        model=_break(tiny.llama(1, seed=1), "entry"),
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        processing_class=tok,
    )
    with pytest.raises(NonFiniteError, match="the student's logits on the teacher samples.*the student diverged"):
        trainer.train()
    args = config(tmp_path, objective="tvd", max_steps=1)  # a NaN student cannot even draw its samples
    trainer = FDistillTrainer(
        model=_break(tiny.llama(1, seed=1), "entry"),
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        processing_class=tok,
    )
    with pytest.raises(
        NonFiniteError,
        match="step 1: the student's next-token probabilities hold NaN or inf while drawing student samples",
    ):
        trainer.train()
    args = config(tmp_path, objective="kl", max_steps=1, fused_divergence=True)
    trainer = FDistillTrainer(
        model=tiny.llama(1, seed=1),
        teacher_model=_break(teacher, "all"),
        args=args,
        train_dataset=data,
        processing_class=tok,
    )
    with pytest.raises(NonFiniteError, match="the teacher's LM-head inputs on the teacher samples"):
        trainer.train()


def test_nonfinite_skip_drops_and_counts_micro_batches(tok, tmp_path):
    """on_nonfinite='skip': no update from NaN micro-batches, the count is logged, and the loss never logs 0.0 for NaN."""
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    student = tiny.llama(1, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    args = config(
        tmp_path,
        objective="js",
        max_steps=2,
        logging_steps=1,
        on_nonfinite="skip",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    trainer = FDistillTrainer(
        model=student, teacher_model=_break(teacher, "entry"), args=args, train_dataset=data, processing_class=tok
    )
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["nonfinite_skipped"] for h in logged] == [2, 4]  # cumulative: 2 micro-batches per step
    assert all(h["loss"] != h["loss"] for h in logged)  # NaN, not 0.0: nothing was trained
    assert trainer.state.log_history[-1]["train_loss"] != trainer.state.log_history[-1]["train_loss"]


def test_nonfinite_settings_are_refused():
    for kw, fragment in [
        (dict(loss_temperature=float("inf")), "loss_temperature=inf"),
        (dict(predistill_alpha_kd=float("nan")), "predistill_alpha_kd=nan"),
        (dict(student_sampling_temperature=float("inf")), "student_sampling_temperature=inf"),
        (dict(objective="seqkd", teacher_sampling="online"), "beam-search outputs"),
        (dict(on_nonfinite="ignore"), "on_nonfinite='ignore'"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            DistillArguments(**kw)
