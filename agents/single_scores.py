"""Single-exemplar scores: each shortlisted pool entry scored alone in front of a training query.

What the retrievers that beat BM25 learn from (EPR, LLM-R, UDR, CEIL): not scores of sets, but of
one candidate at a time, ``score(q, e) = reward of the reference given the one-exemplar prompt
[e, q]``, normalised per query. With the likelihood signal that is one teacher-forced forward pass
per (query, candidate), no decoding; the engine caches each by its prompt, so an interrupted
scoring run resumes where it stopped and any learner (or a rerun after a refactor) reuses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from pillow_env.data import Example
from pillow_env.engine import RewardEngine

__all__ = ["score_singles", "normalise_per_query"]


def score_singles(engine: RewardEngine, pool: Sequence[Example], queries: Sequence[Example],
                  shortlists: np.ndarray, *, chunk: int = 64, progress: bool = True,
                  desc: str = "single-exemplar scores") -> np.ndarray:
    """(Q, k) rewards: row ``q``, column ``j`` scores pool entry ``shortlists[q, j]`` alone before
    ``queries[q]`` with ``engine``'s signal. Queries are scored in order, ``chunk`` requests per
    engine call (each call's new scores are on disk before the next starts)."""
    shortlists = np.asarray(shortlists)
    if shortlists.ndim != 2 or len(shortlists) != len(queries):
        raise ValueError(f"score_singles: shortlists must be (queries, k) = ({len(queries)}, k), "
                         f"got shape {shortlists.shape}")
    plan = [(q, int(j)) for q in range(len(queries)) for j in shortlists[q]]
    rewards = np.zeros(len(plan), dtype=np.float64)
    for lo in tqdm(range(0, len(plan), chunk), desc=desc, unit="batch", disable=not progress):
        part = plan[lo:lo + chunk]
        scored = engine.score([([pool[j]], queries[q]) for q, j in part])
        rewards[lo:lo + len(part)] = [s.reward for s in scored]
    return rewards.reshape(shortlists.shape)


def normalise_per_query(scores: np.ndarray) -> np.ndarray:
    """Each row standardised (mean 0, standard deviation 1; a flat row becomes zeros): what a query's
    candidates gain relative to each other, not how easy the query is."""
    scores = np.asarray(scores, dtype=np.float64)
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = scores.std(axis=1, keepdims=True)
    return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 1e-12)
