"""Per-item scores of the evaluation tasks, computed the way lm-evaluation-harness computes them.

- Multiple choice: `acc` is right when the gold choice has the highest log-likelihood;
  `acc_norm` divides each log-likelihood by the length of the choice's text in characters
  (the choice alone, without the target delimiter), as lm-eval's `acc_norm` does, so long
  choices are not penalised for having more tokens to pay for.
- Generation: SQuAD's answer normalisation (lower case, no punctuation, no articles, single
  spaces), then exact match and token F1, each the best over the references.
- Every task has a random baseline (the mean of 1/number-of-choices for multiple choice, 0
  otherwise) and a centered score, (score - baseline) / (1 - baseline), as nanochat's CORE
  metric does: 0 is chance and 1 is perfect on every task, so tasks can be averaged.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _argmax(values: Sequence[float]) -> int:
    """The index of the largest value; the first one on a tie (numpy's argmax rule)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def choice_predictions(logliks: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(argmax of the log-likelihoods, argmax of log-likelihood per character of the choice)."""
    if len(logliks) != len(choices) or not choices:
        raise ValueError(f"{len(logliks)} log-likelihoods for {len(choices)} choices")
    # max(1, ...): an empty choice would divide by zero; it has no text to normalise by
    per_char = [ll / max(1, len(c)) for ll, c in zip(logliks, choices)]
    return _argmax(logliks), _argmax(per_char)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles dropped, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)  # SQuAD: both empty is a match, one is not
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """The best token-level F1 (bag of normalised words) of the prediction over the references."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(ref).split()) for ref in references), default=0.0)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for no values (a task with no items has no score)."""
    return math.fsum(values) / len(values) if values else math.nan


def random_baseline(n_choices: Sequence[int]) -> float:
    """The expected accuracy of guessing uniformly: the mean over items of 1/n_choices."""
    return mean([1.0 / n for n in n_choices])


def centered(score: float, baseline: float) -> float:
    """(score - baseline) / (1 - baseline): 0 at chance, 1 at a perfect score."""
    if baseline >= 1.0:
        return 0.0  # every item had one possible answer: nothing to measure
    return (score - baseline) / (1.0 - baseline)


def perplexity(logliks: Sequence[float]) -> float:
    """exp(-mean log-likelihood) over the items' targets (lm-eval's LAMBADA perplexity)."""
    if not logliks:
        return math.nan
    nll = -mean(logliks)
    return math.exp(nll) if nll < 700 else math.inf  # math.exp overflows past ~709


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams over all word n-grams of the answers.
    A model that answers every question with "the value of the value of ..." scores near 0;
    varied answers near 1. 0.0 when the answers hold no n-gram."""
    grams = [
        tuple(words[i : i + n])
        for text in texts
        for words in [text.lower().split()]
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0
