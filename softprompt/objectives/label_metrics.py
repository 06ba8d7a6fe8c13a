"""Multi-label and multi-class classification metrics through scikit-learn (the implementations papers
report with; PTEC's evaluation uses sklearn's classification_report, research/methods.md §3.6).

From 0/1 decisions: micro / macro / weighted / samples precision, recall and F1; Jaccard by the same
averagings; the average number of predicted and of gold labels. From scores (a confidence per label):
micro and macro average precision and precision@k, which ranking needs and thresholds do not.
Macro-F1 is PTEC's model-selection metric. Labels never seen in the gold data and never predicted
count as 0 (`zero_division=0`), as sklearn's report does with a warning we do not print.
"""

from __future__ import annotations

import warnings

import numpy as np

AVERAGES = ("micro", "macro", "weighted", "samples")


def label_metrics(gold: np.ndarray, predicted: np.ndarray, scores: np.ndarray | None = None,
                  prefix: str = "eval_", top_k: tuple[int, ...] = (1, 3)) -> dict[str, float]:
    """gold, predicted: (N, L) 0/1; scores: (N, L) probabilities or logits (higher = more likely)."""
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import average_precision_score, jaccard_score, precision_recall_fscore_support

    gold, predicted = np.asarray(gold, dtype=int), np.asarray(predicted, dtype=int)
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # a label with no gold and no prediction: 0, said here
        for average in AVERAGES:
            p, r, f, _ = precision_recall_fscore_support(gold, predicted, average=average, zero_division=0)
            out.update({f"{average}_precision": p, f"{average}_recall": r, f"{average}_f1": f})
            out[f"{average}_jaccard"] = jaccard_score(gold, predicted, average=average, zero_division=0)
        if scores is not None:
            present = gold.sum(0) > 0  # average precision is undefined for a label with no positive
            if present.any():
                out["micro_ap"] = average_precision_score(gold[:, present], scores[:, present], average="micro")
                out["macro_ap"] = average_precision_score(gold[:, present], scores[:, present], average="macro")
    if scores is not None:
        ranked = np.argsort(-scores, axis=1)  # (N, L): labels by confidence
        for k in top_k:
            if k <= gold.shape[1]:
                hits = np.take_along_axis(gold, ranked[:, :k], axis=1).sum(1)  # (N,)
                out[f"precision_at_{k}"] = float(hits.mean() / k)
    out["avg_predicted_labels"] = float(predicted.sum(1).mean())
    out["avg_gold_labels"] = float(gold.sum(1).mean())
    return {prefix + k: float(v) for k, v in out.items()}
