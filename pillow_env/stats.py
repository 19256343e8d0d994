"""Paired comparisons: agents are compared on the same queries, with a bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["paired_bootstrap"]


def paired_bootstrap(differences: Sequence[float] | np.ndarray, *, resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0, strata: Sequence[Any] | None = None) -> dict[str, float]:
    """Mean of per-query differences (agent minus reference) and its percentile bootstrap interval.

    With ``strata`` (one label per difference, e.g. the split it came from) each resample draws
    within every stratum as many differences as it holds, so pooled splits keep their sizes.
    """
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("paired_bootstrap: no differences (no queries in common)")
    rng = np.random.default_rng(seed)
    labels = np.zeros(d.size, dtype=np.int64) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    if labels.size != d.size:
        raise ValueError(f"paired_bootstrap: {labels.size} strata labels for {d.size} differences")
    totals = np.zeros(resamples)
    for label in np.unique(labels):
        part = d[labels == label]
        totals += part[rng.integers(0, part.size, size=(resamples, part.size))].sum(axis=1)
    means = totals / d.size
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": int(d.size), "level": level}
