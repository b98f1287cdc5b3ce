"""Reference-based metrics of one answer against its expected answer(s), each in [0, 1].

Answers and references are normalized SQuAD's way (lower case, no punctuation, no articles,
single spaces) for exact match, containment and token F1. ROUGE-1 and ROUGE-L are F1 over
unigrams and over the longest common subsequence of tokens (Lin, 2004). With several references,
an answer gets its best score.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_CHOICE = re.compile(r"\b([A-J])\b")


def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def exact(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def contains(answer: str, reference: str) -> float:
    return float(normalize(reference) in normalize(answer))


def _f1(overlap: int, predicted: int, expected: int) -> float:
    if not predicted or not expected or not overlap:
        return float(predicted == expected == 0)
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, reference: str) -> float:
    a, r = tokens(answer), tokens(reference)
    return _f1(sum((Counter(a) & Counter(r)).values()), len(a), len(r))


def rouge1(answer: str, reference: str) -> float:
    return token_f1(answer, reference)


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    a, r = tokens(answer), tokens(reference)
    return _f1(_lcs(a, r), len(a), len(r))


def accuracy(answer: str, reference: str) -> float:
    """Multiple choice: the first option letter (A–J) the answer names, else its first word."""
    found = _CHOICE.search(answer)
    picked = found.group(1) if found else (answer.strip().split() or [""])[0]
    return float(normalize(picked) == normalize(reference))


def valid_json(answer: str, reference: str = "") -> float:
    try:
        json.loads(answer)
    except ValueError:
        return 0.0
    return 1.0


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact": exact, "contains": contains, "f1": token_f1, "rouge1": rouge1, "rougeL": rouge_l,
    "accuracy": accuracy, "json": valid_json,
}


def score(metric: str, answer: str, references: list[str]) -> float:
    function = METRICS[metric]
    return max((function(answer, reference) for reference in references or [""]), default=0.0)
