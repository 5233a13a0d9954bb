"""The statistics the leaderboard reports: the mean's standard error, the Wilson interval of a rate, and the
paired difference of two rows over the same questions."""
from __future__ import annotations

import math
import statistics

Z95 = 1.959964


def stderr(values: list[float]) -> float:
    """Sample standard deviation / sqrt(n), as lm-eval reports it."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def wilson(successes: float, n: int, z: float = Z95) -> list[float]:
    """95% Wilson interval of a rate: stays inside [0, 1] and is honest at small n and rates near 0."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def paired_difference(a: dict[str, float], b: dict[str, float]) -> dict | None:
    """a - b over the questions both have (id -> score): mean, its standard error and a normal 95% CI."""
    diffs = [a[q] - b[q] for q in a if q in b]
    if not diffs:
        return None
    delta, se = sum(diffs) / len(diffs), stderr(diffs)
    return {"n": len(diffs), "delta": round(delta, 4), "stderr": round(se, 4),
            "ci95": [round(delta - Z95 * se, 4), round(delta + Z95 * se, 4)]}


def mcnemar_exact(a: dict[str, float], b: dict[str, float]) -> dict:
    """Exact McNemar test of two rows' per-question outcomes (exact match 1/0) over the questions both have:
    only the discordant questions carry information, and under "no difference" each is equally likely to
    favour either row, so the p-value is a two-sided binomial test of a_only out of a_only + b_only at 1/2."""
    from scipy.stats import binomtest

    shared = [q for q in a if q in b]
    a_only = sum(1 for q in shared if a[q] >= 0.5 > b[q])
    b_only = sum(1 for q in shared if b[q] >= 0.5 > a[q])
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": float(f"{p:.6g}")}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: family-wise error control over a grid's comparisons, valid under any
    dependence between them (they share rows), and uniformly more powerful than Bonferroni."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = float(f"{running:.6g}")
    return adjusted
