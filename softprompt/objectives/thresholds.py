"""Per-label decision thresholds tuned on held-out data (PTEC's scores make them possible: the official
code fixes 0.5; a per-label threshold trades a rare label's precision for recall, which macro-F1 rewards).

For each label, the threshold t maximising that label's F1 of `score > t` over the dev rows. Candidates
are the default and the midpoints between consecutive distinct scores (every distinct decision set is
one of them, and a midpoint keeps a margin on both sides). Ties go to the candidate nearest the default,
so a label the dev data cannot tell about keeps it: a label with no positive in dev has no F1 to gain.
"""

from __future__ import annotations

import numpy as np


def tune_thresholds(gold: np.ndarray, scores: np.ndarray, default: float) -> np.ndarray:
    """gold (N, L) 0/1 and scores (N, L) probabilities -> (L,) thresholds in (0, 1)."""
    gold, scores = np.asarray(gold, dtype=bool), np.asarray(scores, dtype=np.float64)
    out = np.full(gold.shape[1], default, dtype=np.float64)
    for j in range(gold.shape[1]):
        if not gold[:, j].any():
            continue
        levels = np.unique(scores[:, j])  # ascending
        candidates = np.concatenate([[default], (levels[:-1] + levels[1:]) / 2, [levels[0] / 2]])  # (C,)
        predicted = scores[:, j][None, :] > candidates[:, None]  # (C, N)
        tp = (predicted & gold[:, j]).sum(1)
        f1 = 2 * tp / (predicted.sum(1) + gold[:, j].sum())  # (C,); the denominator is > 0: gold has a positive
        best = np.flatnonzero(f1 == f1.max())
        out[j] = candidates[best[np.argmin(np.abs(candidates[best] - default))]]
    return out
