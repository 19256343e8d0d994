"""Paired comparisons: agents are compared on the same queries, with a bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paired_bootstrap"]


def paired_bootstrap(differences: Sequence[float] | np.ndarray, *, resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Mean of per-query differences (agent minus reference) and its percentile bootstrap interval."""
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("paired_bootstrap: no differences (no queries in common)")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": int(d.size), "level": level}
