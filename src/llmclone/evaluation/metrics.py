"""Held-out metrics: surprise (perplexity), overlap (chrF) and distinguishability (a style classifier)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llmclone.evaluation.style import Reply, features


def perplexity(losses: Sequence[tuple[float, int]]) -> float:
    """Token-weighted perplexity over (summed loss, tokens) pairs."""
    tokens = sum(n for _, n in losses)
    return math.exp(sum(loss for loss, _ in losses) / tokens) if tokens else float("nan")


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu, character n-grams) of generated replies against the real ones, 0-100."""
    from sacrebleu.metrics import CHRF

    if not hypotheses:
        return float("nan")
    return round(CHRF().corpus_score(list(hypotheses), [list(references)]).score, 2)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def distinguishability(real: Sequence[Reply], generated: Sequence[Reply], seed: int = 0, folds: int = 5
                       ) -> dict[str, Any]:
    """How well a logistic regression on style features tells real replies from generated ones.

    Cross-validated accuracy over both sets (each reply predicted once, by a model that did not see it),
    with a 95% Wilson interval. 0.5 means the style is indistinguishable; 1.0 means always told apart.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.array([features(r) for r in [*real, *generated]], dtype=float)
    y = np.array([1] * len(real) + [0] * len(generated))
    folds = min(folds, len(real), len(generated))
    if folds < 2:
        return {"accuracy": float("nan"), "ci95": [0.0, 1.0], "n": len(y)}
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    predicted = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    correct = int((predicted == y).sum())
    return {"accuracy": round(correct / len(y), 4), "ci95": list(wilson(correct, len(y))), "n": len(y)}
