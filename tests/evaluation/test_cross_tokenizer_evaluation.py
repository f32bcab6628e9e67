"""Sequence-level evaluation across tokenizers (fdistill.evaluation.cross_tokenizer) on two hand-made tokenizers.

Float64 tiny models over the alphabet {a, b, space} (fdistill.testing.cross_tokenizers): every score is checked
against a one-sequence-at-a-time forward of the model's own prompt tokens followed by its canonical tokens of the text.
"""

import json
import math

import pytest
import torch
from tolerances import approx_sums

from fdistill import testing as tiny
from fdistill.evaluation.cross_tokenizer import (
    TextSamples,
    cross_sequence_divergences,
    draw_text_samples,
    score_own_samples,
    teacher_text_samples,
)
from fdistill.lm.cross_tokenizer import completion_text, encode_completion
from fdistill.testing import cross_tokenizers

PROMPTS = ["ab", "b a", "abba", "a b b", "ba"]
SETTINGS = dict(num_samples=3, max_new_tokens=5, batch_size=4)


@pytest.fixture(scope="module")
def pair():
    student_tok, teacher_tok = cross_tokenizers()  # byte-level BPE student, SentencePiece-style teacher
    student = (
        tiny.llama(2, seed=1, hidden=16, init=0.5, tokenizer=student_tok).double().eval()
    )  # peaked: varied samples
    teacher = tiny.llama(2, seed=2, hidden=16, init=0.5, tokenizer=teacher_tok).double().eval()
    return student, teacher, student_tok, teacher_tok


def reference_logprob(model, tok, prompt: str, completion: list[int]) -> float:
    """log P(completion | prompt) by one unpadded forward of [prompt tokens | completion] (float64)."""
    prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(float(logp[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(completion))


def test_own_samples_are_text_and_scored_in_canonical_and_sampled_tokens(pair):
    student, _, tok, _ = pair
    drawn = draw_text_samples(student, tok, PROMPTS, **SETTINGS, seed=3)
    assert len(drawn.texts) == len(PROMPTS) * 3 and drawn.prompts[:3] == [PROMPTS[0]] * 3
    for ids, text, ended in zip(drawn.sampled_ids, drawn.texts, drawn.ended):
        assert (text, ended) == completion_text(tok, ids) and len(ids) <= 5
    assert any(drawn.ended) and not all(drawn.ended)  # both kinds of boundary are exercised
    scored = score_own_samples(student, tok, drawn, batch_size=4)
    for i, (prompt, text, ended, ids) in enumerate(zip(drawn.prompts, drawn.texts, drawn.ended, drawn.sampled_ids)):
        canonical = encode_completion(tok, text, ended)
        assert scored.tokens[i] == len(canonical) and bool(scored.canonical[i]) == (canonical == ids)
        assert float(scored.logprob[i]) == approx_sums(
            reference_logprob(student, tok, prompt, canonical), torch.float64, 8
        )
        assert float(scored.sampled_logprob[i]) == approx_sums(
            reference_logprob(student, tok, prompt, ids), torch.float64, 8
        )
    assert not bool(scored.canonical.all())  # these random models sample non-canonical token sequences too


def test_the_estimates_are_the_plain_estimators_on_both_models_canonical_scores(pair):
    student, teacher, s_tok, t_tok = pair
    result = cross_sequence_divergences(student, teacher, s_tok, t_tok, PROMPTS, **SETTINGS, seed=5)
    p_samples = draw_text_samples(teacher, t_tok, PROMPTS, **SETTINGS, seed=6)  # the teacher draws after seed + 1
    q_samples = draw_text_samples(student, s_tok, PROMPTS, **SETTINGS, seed=5)

    def scores(samples: TextSamples, model, tok) -> list[float]:
        return [
            reference_logprob(model, tok, pr, encode_completion(tok, t, e))
            for pr, t, e in zip(samples.prompts, samples.texts, samples.ended)
        ]

    lp_p, lq_p = scores(p_samples, teacher, t_tok), scores(p_samples, student, s_tok)
    lp_q, lq_q = scores(q_samples, teacher, t_tok), scores(q_samples, student, s_tok)
    n = len(lp_p)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    log_m = lambda a, b: math.log(0.5 * math.exp(a) + 0.5 * math.exp(b))  # noqa: E731
    expected = {
        "kl": mean([a - b for a, b in zip(lp_p, lq_p)]),
        "rkl": mean([b - a for a, b in zip(lp_q, lq_q)]),
        "js": 0.5 * mean([a - log_m(a, b) for a, b in zip(lp_p, lq_p)])
        + 0.5 * mean([b - log_m(a, b) for a, b in zip(lp_q, lq_q)]),
        "tvd": 0.5 * mean([max(0.0, 1 - math.exp(b - a)) for a, b in zip(lp_p, lq_p)])
        + 0.5 * mean([max(0.0, 1 - math.exp(a - b)) for a, b in zip(lp_q, lq_q)]),
        "r_llh": -mean(lp_q),
        "r_cvg": -mean(lq_p),
        "r_llh_char": -sum(lp_q) / sum(len(t) for t in q_samples.texts),
        "r_cvg_char": -sum(lq_p) / sum(len(t) for t in p_samples.texts),
        "r_llh_token": -sum(lp_q)
        / sum(len(encode_completion(t_tok, t, e)) for t, e in zip(q_samples.texts, q_samples.ended)),
        "r_cvg_token": -sum(lq_p)
        / sum(len(encode_completion(s_tok, t, e)) for t, e in zip(p_samples.texts, p_samples.ended)),
        "teacher_ended": sum(p_samples.ended) / n,
        "student_ended": sum(q_samples.ended) / n,
        "teacher_sample_length": sum(len(r) for r in p_samples.sampled_ids) / n,
        "student_sample_chars": mean([len(t) for t in q_samples.texts]),
    }
    assert {k: result[k] for k in expected} == approx_sums(expected, torch.float64, 64)
    assert result["kl"] > 0 and result["rkl"] > 0 and 0 < result["js"] < math.log(2) and 0 < result["tvd"] < 1
    # shared teacher samples give the same numbers
    shared = teacher_text_samples(teacher, t_tok, PROMPTS, **SETTINGS, seed=5)
    again = cross_sequence_divergences(
        student, teacher, s_tok, t_tok, PROMPTS, **SETTINGS, seed=5, teacher_samples=shared
    )
    assert again == result


def test_a_model_against_itself_across_one_tokenizer_is_zero(pair):
    student, _, tok, _ = pair
    result = cross_sequence_divergences(student, student, tok, tok, PROMPTS, **SETTINGS, seed=0)
    assert [result[k] for k in ("kl", "rkl", "js", "tvd")] == [0.0, 0.0, 0.0, 0.0]


def test_the_text_boundary_eos_specials_and_non_canonical_samples(pair):
    student, _, tok, _ = pair  # tok: <pad>=0 </s>=1 a=2 b=3 ' '=4 ab=5 ' b'=6; merges a+b, ' '+b
    rows = [
        [5, 4, 2, 1],  # "ab a" + EOS: canonical, ended
        [2, 3, 4, 3],  # "ab b" not as merged ("ab", " b"): non-canonical, not ended
        [2, 0, 3],  # a <pad> b: the special is no text -> "ab", non-canonical
        [1],  # EOS at once: empty text, ended
    ]
    texts = [completion_text(tok, r) for r in rows]
    assert texts == [("ab a", True), ("ab b", False), ("ab", False), ("", True)]
    samples = TextSamples(["ab"] * 4, [t for t, _ in texts], [e for _, e in texts], rows)
    scored = score_own_samples(student, tok, samples, batch_size=3)
    assert scored.canonical.tolist() == [True, False, False, True]
    assert scored.tokens.tolist() == [4, 2, 1, 1]  # [5,4,2,1], [5,6], [5], [1]
    for i, r in enumerate(rows):
        canonical = encode_completion(tok, *texts[i])
        assert float(scored.logprob[i]) == approx_sums(
            reference_logprob(student, tok, "ab", canonical), torch.float64, 8
        )
        assert float(scored.sampled_logprob[i]) == approx_sums(
            reference_logprob(student, tok, "ab", r), torch.float64, 8
        )


def test_evaluate_uses_the_cross_path_when_the_tokenizers_differ(pair, tmp_path):
    from fdistill.cli import main

    student, teacher, s_tok, t_tok = pair
    for name, model, tok in (("teacher", teacher, t_tok), ("student", student, s_tok)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "reference": p[::-1]}) + "\n" for p in PROMPTS))
    main(
        ["evaluate", "--teacher", str(tmp_path / "teacher"), "--models", f"s={tmp_path / 'student'}", "--data",
         str(data), "--split", "train", "--max-new-tokens", "4", "--metrics", "chrf", "--against-teacher",
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    row = json.loads((tmp_path / "out" / "results.json").read_text())["s"]
    assert {"kl", "rkl", "js", "tvd", "r_llh_char", "r_cvg_char", "teacher_noncanonical", "teacher/chrf"} <= set(row)
    assert "tvd_bound" not in row and all(math.isfinite(row[k]) for k in ("kl", "rkl", "js", "tvd"))
