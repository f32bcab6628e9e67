"""The teacher logits cache (issue 25): the format's stated error, float64 property test; the loss and gradient from
the decoded cache against the same top-k in float32 for every kind and top-k mode, within a tested bound; training,
refusals (another tokenizer, resume against another teacher), the older float columns, and the Hub push."""

import json

import hub_standin
import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.divergences import TeacherTopK, topk_step_divergence
from fdistill.errors import InputError
from fdistill.lm import logits_cache as lc
from fdistill.lm.sampling import OfflineSamplingSettings, sample_offline

transformers.logging.set_verbosity_error()


def roundtrip(ids: np.ndarray, logprobs: np.ndarray):
    """Encode then decode in float64: ``(decoded ids, decoded log-probs, per-position bound)``."""
    e = lc.encode(ids, logprobs)
    got_ids, got = lc.decode(e[lc.IDS], e[lc.TOP], e[lc.SCALE], e[lc.CODES], dtype=torch.float64)
    return got_ids.numpy(), got.numpy(), lc.error_bound(e[lc.TOP], e[lc.SCALE]), e


@st.composite
def distributions(draw):
    """Top-k of arbitrary next-token distributions in float64: wide logit ranges, ties, -inf (banned tokens) and a
    near-one top-1 mass."""
    positions, vocab = draw(st.integers(1, 6)), draw(st.integers(2, 80))
    k = draw(st.integers(1, vocab))
    logit = st.one_of(
        st.floats(-60, 60, allow_nan=False),
        st.sampled_from([-np.inf, 0.0, 1.0]),  # banned tokens and ties
    )
    logits = np.array(draw(st.lists(logit, min_size=positions * vocab, max_size=positions * vocab)))
    logits = logits.reshape(positions, vocab)
    logits[:, 0] = np.where(np.isfinite(logits).any(-1), logits[:, 0], 0.0)  # every position has a possible token
    if draw(st.booleans()):
        logits[:, draw(st.integers(0, vocab - 1))] = 80.0  # top-1 mass within e^-20 of one
    log_p = torch.log_softmax(torch.from_numpy(logits), -1)
    values, ids = log_p.topk(k, -1)
    return ids.numpy(), values.numpy()


@settings(max_examples=300, deadline=None)
@given(distributions())
def test_decoding_is_within_the_stated_bound_in_float64(drawn):
    ids, logprobs = drawn
    got_ids, got, bound, e = roundtrip(ids, logprobs)
    assert (got_ids == ids).all()
    assert (np.isneginf(got) == np.isneginf(logprobs)).all()  # -inf stays -inf, nothing else becomes -inf
    finite = np.isfinite(logprobs)
    error = np.abs(np.where(finite, got, 0.0) - np.where(finite, logprobs, 0.0))
    # the stated bound, and float64's own rounding of top - code * scale (|values| < 100 here)
    assert (error <= bound[:, None] + 1e-12).all(), (error.max(), bound)
    assert e[lc.CODES].dtype == np.uint16 and e[lc.TOP].dtype == np.float32 and e[lc.SCALE].dtype == np.float32
    # the tail mass, kept from before rounding: float32 of log(1 - sum) in float64, -inf when the top k hold it all
    total = np.logaddexp.reduce(logprobs, axis=-1)
    with np.errstate(divide="ignore"):
        exact_tail = np.where(total < 0, np.log(-np.expm1(np.minimum(total, 0))), -np.inf)
    tail = e[lc.TAIL].astype(np.float64)
    assert (np.isneginf(tail) == np.isneginf(exact_tail)).all()
    finite_tail = np.isfinite(exact_tail)
    assert (
        np.abs(tail[finite_tail] - exact_tail[finite_tail]) <= lc.TOP_ROUNDING * np.abs(exact_tail[finite_tail])
    ).all()


def test_the_bound_is_tight_enough_to_matter_and_codes_use_their_range():
    """Uniform gaps: the error reaches close to half a step (the bound is not vacuous), the step is range/65534."""
    rng = np.random.default_rng(0)
    logprobs = np.sort(-rng.uniform(0, 30, size=(200, 64)), -1)[:, ::-1].astype(np.float32).astype(np.float64)
    ids = np.tile(np.arange(64), (200, 1))
    _, got, bound, e = roundtrip(ids, logprobs)
    gap = logprobs.max(-1) - logprobs.min(-1)
    np.testing.assert_allclose(e[lc.SCALE], gap / lc.MAX_CODE, rtol=1e-6)
    assert np.abs(got - logprobs).max() > 0.9 * bound.min()  # reached: the bound is what the format costs
    assert e[lc.CODES].reshape(200, 64).max(-1).tolist() == [lc.MAX_CODE] * 200


def test_bad_values_are_refused_before_encoding():
    with pytest.raises(InputError, match="NaN, \\+inf"):
        lc.encode(np.zeros((1, 2), int), np.array([[0.0, np.nan]]))
    with pytest.raises(InputError, match="both be"):
        lc.encode(np.zeros((1, 3), int), np.zeros((1, 2)))


# ----------------------------------------------------------------------------- loss and gradient error

KINDS_MODES = [
    (k, m) for k in ("kl", "rkl", "js", "tvd") for m in ("tail", "renormalised") if (k, m) != ("rkl", "renormalised")
]


def terms_and_grad(kind, mode, on, student_logits, ids, logprobs, tail=None):
    """Per-position terms and the gradient of their sum with respect to the student's logits (float64)."""
    s = student_logits.clone().requires_grad_(True)
    terms = topk_step_divergence(kind, s, TeacherTopK(ids, logprobs, tail_logprobs=tail), on=on, mode=mode)
    (grad,) = torch.autograd.grad(terms.sum(), s)
    return terms.detach(), grad


def sensitivity(kind, mode, on, student_logits, ids, logprobs, h=1e-6):
    """``Σ_j |∂f/∂l_j|`` per position for the terms ``f`` and for every gradient entry, by central differences in
    float64 over each of the K teacher log-probabilities ``l_j`` (all K perturbed copies in one batch)."""
    k = ids.shape[-1]
    eye = torch.eye(k, dtype=torch.float64)[:, None, :]  # (K, 1, K): entry j of every position
    batch = lambda x: x.unsqueeze(0).expand(k, *x.shape)  # noqa: E731
    plus = terms_and_grad(kind, mode, on, batch(student_logits), batch(ids), logprobs + h * eye)
    minus = terms_and_grad(kind, mode, on, batch(student_logits), batch(ids), logprobs - h * eye)
    return ((plus[0] - minus[0]) / (2 * h)).abs().sum(0), ((plus[1] - minus[1]) / (2 * h)).abs().sum(0)


@pytest.fixture(scope="module")
def real_topk():
    """Top-8 of a tiny teacher's next-token distributions on its own samples, in float32 as a sampler gives them,
    and a different tiny model's logits (the student) at the same positions."""
    tok = tiny.tokenizer()
    teacher, student = tiny.llama(2, seed=0, init=0.15), tiny.llama(1, seed=1, init=0.1)
    ids = torch.tensor(tiny.sample_ids(teacher, tok, tiny.prompts(4, seed=2), 12, seed=2)[0])[None]
    with torch.no_grad():
        t_logits, s_logits = teacher(ids).logits[0].float(), student(ids).logits[0].double()
    values, top_ids = torch.log_softmax(t_logits, -1).topk(8, -1)
    return top_ids, values, s_logits


@pytest.mark.parametrize("on", ["teacher", "student"])
@pytest.mark.parametrize("kind,mode", KINDS_MODES)
def test_loss_and_gradient_from_the_cache_are_within_the_tested_bound(real_topk, kind, mode, on):
    """|f(decoded) − f(float32)| ≤ 1.5 · δ_t · Σ_j |∂f/∂l_j| (first order in the per-position bound δ_t, with room for
    the second-order term), for the loss terms and every entry of the gradient, in float64."""
    ids, values, student = real_topk
    e = lc.encode(ids.numpy(), values.numpy())
    got_ids, decoded, tail = lc.decode(e[lc.IDS], e[lc.TOP], e[lc.SCALE], e[lc.CODES], e[lc.TAIL], dtype=torch.float64)
    assert torch.equal(got_ids, ids)
    delta = torch.from_numpy(lc.error_bound(e[lc.TOP], e[lc.SCALE]))  # (T,)
    exact_terms, exact_grad = terms_and_grad(kind, mode, on, student, ids, values.double())
    cache_terms, cache_grad = terms_and_grad(kind, mode, on, student, ids, decoded, tail)
    s_terms, s_grad = sensitivity(kind, mode, on, student, ids, values.double())
    assert (delta > 0).all() and (decoded != values.double()).any()  # the cache is lossy: the check is not vacuous
    assert ((cache_terms - exact_terms).abs() <= 1.5 * delta * s_terms + 1e-12).all()
    assert ((cache_grad - exact_grad).abs() <= 1.5 * delta[:, None] * s_grad + 1e-12).all()
    # and the float32 path training takes: the decoded cache in float32 against the float32 top-k
    _, f32, tail32 = lc.decode(e[lc.IDS], e[lc.TOP], e[lc.SCALE], e[lc.CODES], e[lc.TAIL])
    assert f32.dtype == torch.float32 and tail32.dtype == torch.float32
    cached = TeacherTopK(ids, f32, tail_logprobs=tail32)
    loss32 = topk_step_divergence(kind, student.float(), cached, on=on, mode=mode).sum()
    exact32 = topk_step_divergence(kind, student.float(), TeacherTopK(ids, values), on=on, mode=mode).sum()
    bound = float(1.5 * (delta * s_terms).sum()) + 1e-5 * float(exact32.abs() + 1)  # + float32 rounding
    assert abs(float(loss32 - exact32)) <= bound


# ----------------------------------------------------------------------------- training, refusals, Hub


@pytest.fixture(scope="module")
def teacher():
    return tiny.llama(2, seed=0, init=0.15)


def make_cache(teacher, tok, folder, k=5):
    settings = OfflineSamplingSettings(max_new_tokens=8, batch_size=4, topk_logprobs=k)
    return sample_offline(teacher, tok, tiny.dataset(8, seed=3), str(folder), settings, teacher_id="tiny")


@pytest.fixture(scope="module")
def cache(teacher, tok, tmp_path_factory):
    return make_cache(teacher, tok, tmp_path_factory.mktemp("cache"))


def config(tmp_path, **kw):
    return tiny.config(tmp_path, **{"objective": "kl", "max_steps": 2, "teacher_topk_columns": True, **kw})


def test_sample_writes_the_cache_with_its_record(cache, teacher, tok):
    from fdistill.lm.loading import model_fingerprint

    assert set(lc.CACHE_COLUMNS) <= set(cache.column_names) and not set(lc.FLOAT_COLUMNS) & set(cache.column_names)
    assert cache.features[lc.IDS].feature.dtype == "uint16" and cache.features[lc.CODES].feature.dtype == "uint16"
    record = lc.provenance_of(cache)
    prints = model_fingerprint(teacher, tok)
    assert record["teacher_fingerprint"] == prints["model"] and record["tokenizer_fingerprint"] == prints["tokenizer"]
    fmt = record["topk_cache"]
    assert fmt["version"] == lc.FORMAT_VERSION and fmt["k"] == 5 and fmt["ids_dtype"] == "uint16"
    positions = sum(len(r) for r in cache["teacher_sample_ids"])
    # the five columns' Arrow bytes: 2 per id and per code, 4 + 4 + 4 per position (top, step, tail), and at most
    # one int32 offset per row (and one more) for each column
    assert 4 * 5 + 12 <= fmt["bytes_per_token"] <= 4 * 5 + 12 + 20 * (len(cache) + 1) / positions


def test_old_float_columns_still_train_like_the_cache_they_hold(cache, tok, tmp_path):
    """A dataset with the older nested float columns (the decoded cache's values, no kept tail) trains; its losses
    are the cache's up to the tail's rounding, which the cache keeps and the float columns derive."""

    def old_columns(row):
        ids, lp = lc.decode(row[lc.IDS], row[lc.TOP], row[lc.SCALE], row[lc.CODES])
        return {lc.FLOAT_COLUMNS[0]: ids.tolist(), lc.FLOAT_COLUMNS[1]: lp.tolist()}

    old = cache.map(old_columns, remove_columns=list(lc.CACHE_COLUMNS))
    losses = []
    for data in (cache, old):
        trainer = FDistillTrainer(
            model=tiny.llama(1, seed=1),
            args=config(tmp_path / str(len(losses))),
            train_dataset=data,
            processing_class=tok,
        )
        trainer.train()
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert len(losses[0]) == 2 and all(np.isfinite(losses[1]))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_a_kept_tail_keeps_reverse_kl_finite_when_the_top_k_hold_nearly_all_the_mass():
    """Top-1 mass 1 − 1e-7: derived from the rounded values the tail would vanish and rkl be infinite; the kept tail
    gives the float64 loss of the float32 top-k."""
    logits = torch.full((3, 50), -5.0, dtype=torch.float64)
    logits[:, 7] = 12.0
    logits[1, 3] = 11.0
    values, ids = torch.log_softmax(logits, -1).float().topk(4, -1)
    e = lc.encode(ids.numpy(), values.numpy())
    _, decoded, tail = lc.decode(e[lc.IDS], e[lc.TOP], e[lc.SCALE], e[lc.CODES], e[lc.TAIL], dtype=torch.float64)
    student = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = topk_step_divergence("rkl", student, TeacherTopK(ids, values.double()), on="student")
    kept = topk_step_divergence("rkl", student, TeacherTopK(ids, decoded, tail_logprobs=tail), on="student")
    assert torch.isfinite(kept).all()
    torch.testing.assert_close(kept, exact, rtol=1e-3, atol=0)


def test_a_cache_of_another_tokenizer_is_refused_naming_both(cache, tok, tmp_path):
    other = tiny.tokenizer()
    other.add_tokens(["zebra"])
    from fdistill.lm.loading import tokenizer_fingerprint

    with pytest.raises(InputError) as error:
        FDistillTrainer(model=tiny.llama(1, seed=1), args=config(tmp_path), train_dataset=cache, processing_class=other)
    message = str(error.value)
    assert lc.provenance_of(cache)["tokenizer_fingerprint"] in message and tokenizer_fingerprint(other) in message


def test_a_cache_without_its_record_or_of_another_version_is_refused(cache, tok, tmp_path):
    bare = cache.map(lambda r: r)
    bare.info.description = ""
    with pytest.raises(InputError, match="load_cache"):
        FDistillTrainer(model=tiny.llama(1, seed=1), args=config(tmp_path), train_dataset=bare, processing_class=tok)
    record = lc.provenance_of(cache)
    record["topk_cache"]["version"] = 99
    bare.info.description = lc.DESCRIPTION_PREFIX + json.dumps(record)
    with pytest.raises(InputError, match="version 99"):
        FDistillTrainer(model=tiny.llama(1, seed=1), args=config(tmp_path), train_dataset=bare, processing_class=tok)


def test_resuming_against_a_cache_of_another_teacher_is_refused_naming_both(cache, tok, tmp_path):
    other = make_cache(tiny.llama(2, seed=7, init=0.15), tok, tmp_path / "other")
    args = config(tmp_path / "run", save_strategy="steps", save_steps=1)
    FDistillTrainer(model=tiny.llama(1, seed=1), args=args, train_dataset=cache, processing_class=tok).train()
    resumed = FDistillTrainer(
        model=tiny.llama(1, seed=1),
        args=config(tmp_path / "run", max_steps=3),
        train_dataset=other,
        processing_class=tok,
    )
    with pytest.raises(InputError) as error:
        resumed.train(resume_from_checkpoint=True)
    message = str(error.value)
    assert "another teacher" in message
    assert lc.provenance_of(cache)["teacher_fingerprint"] in message
    assert lc.provenance_of(other)["teacher_fingerprint"] in message


def test_push_to_hub_uploads_the_cache_and_its_card_and_it_trains_back(cache, tok, tmp_path, monkeypatch):
    """The real huggingface_hub client, over HTTP to the Hub stand-in (tests/hub_standin.py), both ways."""
    from fdistill.lm.loading import load_data

    with hub_standin.serve(monkeypatch, tmp_path) as hub:
        url = lc.push_cache_to_hub(cache, "me/tiny-cache")
        writes = [r for r in hub.requests if r[0] in ("POST", "PUT")]
        assert writes[0] == ("POST", "/api/repos/create") and writes[-1] == (
            "POST",
            "/api/datasets/me/tiny-cache/commit/main",
        )
        repo = hub.repo("me/tiny-cache", "dataset")
        assert repo.messages == ["fdistill teacher top-k cache (K=5)"] and "tiny-cache" in url
        shards = [p for p in repo.files if p.startswith("data/") and p.endswith(".arrow")]
        assert shards and all(repo.files[p][1] for p in shards)  # the Arrow shards went by LFS
        card = repo.files["README.md"][0].decode()
        loaded = lc.load_cache("me/tiny-cache")  # downloaded back through the client
        from_train_data = load_data("me/tiny-cache")  # `fdistill train train_data=REPO` keeps the record too
    record = lc.provenance_of(cache)
    for shown in (
        "| K | 5 |",
        lc.FORMAT_NAME,
        str(record["topk_cache"]["bytes_per_token"]),
        record["teacher_fingerprint"],
    ):
        assert shown in card
    assert "fdistill sample --topk-logprobs 5" in card and "api_key" not in card.lower()
    assert lc.provenance_of(loaded) == record and loaded[lc.CODES] == cache[lc.CODES]
    assert lc.provenance_of(from_train_data) == record
    trainer = FDistillTrainer(
        model=tiny.llama(1, seed=1), args=config(tmp_path), train_dataset=loaded, processing_class=tok
    )
    trainer.train()
    assert trainer.state.global_step == 2


def test_push_without_a_cache_record_is_refused_before_any_upload(cache, tmp_path, monkeypatch):
    bare = cache.map(lambda r: r)
    bare.info.description = ""
    with hub_standin.serve(monkeypatch, tmp_path) as hub:
        with pytest.raises(InputError, match="no teacher top-k cache record"):
            lc.push_cache_to_hub(bare, "me/x")
        assert hub.requests == []


def test_sample_command_pushes_the_cache_with_the_command_and_no_secret(tok, tmp_path, monkeypatch):
    from fdistill.cli import main

    teacher = tmp_path / "teacher"
    tiny.llama(1, seed=0).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    prompts = tmp_path / "prompts.jsonl"
    tiny.dataset(4, seed=0).to_json(str(prompts))
    argv = ["sample", "--teacher", str(teacher), "--data", str(prompts), "--output", str(tmp_path / "out")]
    with hub_standin.serve(monkeypatch, tmp_path, token="hf_secret_standin") as hub:
        main([*argv, "--topk-logprobs", "3", "--max-new-tokens", "4", "--no-progress", "--push-to-hub", "me/cache"])
        repo = hub.repo("me/cache", "dataset")
    card = repo.files["README.md"][0].decode()
    assert "fdistill sample --teacher" in card and "--topk-logprobs 3" in card and "| K | 3 |" in card
    record = json.loads(repo.files[lc.PROVENANCE][0])
    assert record["topk_cache"]["k"] == 3 and record["tokenizer_fingerprint"]
    assert not [p for p, (data, _) in repo.files.items() if b"hf_secret_standin" in data]  # the token is pushed nowhere


def test_the_command_on_the_card_holds_no_secret():
    argv = ["sample", "--teacher-server", "http://me:pw@host:8000/v1?token=abc", "--teacher-server-api-key", "sk-1"]
    line = lc.redacted_command([*argv, "--teacher-server-api-key=sk-2", "--topk-logprobs", "64"])
    assert not any(secret in line for secret in ("pw", "abc", "sk-1", "sk-2"))
    assert "http://host:8000/v1?token=***" in line and line.endswith("--topk-logprobs 64")


@pytest.mark.parametrize("kind", ["kl", "rkl", "js", "tvd"])
def test_a_kept_tail_equal_to_the_derived_one_changes_nothing(kind):
    """``tail_logprobs`` set to ``log(1 − Σ p)`` of the same values gives the derived-tail terms (float64), and a
    position whose top K hold a zero-probability token still has no tail."""
    g = torch.Generator().manual_seed(3)
    teacher = TeacherTopK.from_logits(torch.randn(4, 6, 30, dtype=torch.float64, generator=g), k=5)
    teacher.logprobs[0, 0, -1] = -torch.inf
    total = teacher.logprobs.logsumexp(-1)
    kept = TeacherTopK(teacher.ids, teacher.logprobs, tail_logprobs=torch.log(-torch.expm1(total)))
    student = torch.randn(4, 6, 30, dtype=torch.float64, generator=g)
    derived = topk_step_divergence(kind, student, teacher, on="teacher")
    torch.testing.assert_close(topk_step_divergence(kind, student, kept, on="teacher"), derived)
    assert kept[1].tail_logprobs.shape == (6,)


def test_ids_past_65535_are_kept_as_uint32():
    ids = [[[70000, 3], [5, 65535]], [[1, 2]]]
    logprobs = [[[-0.1, -3.0], [-0.5, -0.9]], [[-0.2, -2.0]]]
    data, fmt = lc.cache_dataset(ids, logprobs)
    assert fmt.ids_dtype == "uint32" and data.features[lc.IDS].feature.dtype == "uint32"
    row = data[0]
    got_ids, got, tail = lc.decode(row[lc.IDS], row[lc.TOP], row[lc.SCALE], row[lc.CODES], row[lc.TAIL])
    assert got_ids.tolist() == ids[0]
    assert (got - torch.tensor(logprobs[0])).abs().max() <= float(
        lc.error_bound(row[lc.TOP], row[lc.SCALE]).max()
    ) + 1e-7
    assert lc.cache_dataset(ids[1:], logprobs[1:])[1].ids_dtype == "uint16"
