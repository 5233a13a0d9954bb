"""Scores: FireAct's answer normalisation, exact match, token F1, and the yes/no and letter prefix rules."""
from __future__ import annotations

import re
import string
from collections import Counter


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, articles removed, white space collapsed (HotpotQA's / FireAct's)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str | None, gold: str) -> float:
    return float(prediction is not None and normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str | None, gold: str) -> float:
    """HotpotQA token F1; yes/no/noanswer only match themselves, as in the official script."""
    if prediction is None:
        return 0.0
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in ("yes", "no", "noanswer") or ref in ("yes", "no", "noanswer")) and pred != ref:
        return 0.0
    common = Counter(pred.split()) & Counter(ref.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred.split()), same / len(ref.split())
    return 2 * precision * recall / (precision + recall)


def yes_no(prediction: str | None) -> str | None:
    """StrategyQA's prefix rule: an answer counts as yes/no by how it starts ("Yes, because ..." is yes)."""
    norm = normalize_answer(prediction or "")
    for label in ("yes", "no"):
        if norm == label or norm.startswith(label + " "):
            return label
    return None


def choice_letter(prediction: str | None) -> str | None:
    """MMLU's prefix rule: "B", "B.", "(B) text" and "b) text" all count as B."""
    match = re.match(r"\s*\(?([A-Da-d])(?:[\s\.\):,]|$)", prediction or "")
    return match.group(1).upper() if match else None


def score(dataset_kind: str, prediction: str | None, gold: str) -> dict[str, float]:
    """em and f1 for one answer; dataset_kind picks the rule (qa, yesno, choice)."""
    if dataset_kind == "yesno":
        em = float(yes_no(prediction) == normalize_answer(gold))
        return {"em": em, "f1": em}
    if dataset_kind == "choice":
        em = float(choice_letter(prediction) == gold.strip().upper())
        return {"em": em, "f1": em}
    return {"em": exact_match(prediction, gold), "f1": f1_score(prediction, gold)}
