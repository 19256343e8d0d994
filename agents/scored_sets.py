"""Scored exemplar sets as padded tensors, and what every set scorer offers the listwise learner.

A query's training data is a dict ``{set in prompt order: reward}`` over sets of its shortlist.
:class:`SetBatch` pads many queries' sets into tensors; a :class:`SetScorer` (the matching network
of :mod:`agents.matching`, the linear ranker of :mod:`agents.set_ranker`) scores every set of a
batch, with scores that are logits of a softmax over each query's sets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

__all__ = ["ScoredSets", "SetBatch", "SetScorer"]

ScoredSets = dict[tuple[int, ...], float]  # one query's sets (pool indices, prompt order) -> reward


@dataclass
class SetBatch:
    """Padded per-query scored sets: row ``i`` is query ``query_indices[i]``, column ``j`` one of its sets.

    Attributes:
        picks: (n, width, m) pool indices of each set in pick order (nearest to the query first).
        rewards: (n, width) each set's reward (0 where padded).
        valid: (n, width) True where a column holds a set.
        allowed: (n, K) True for the pool entries in each query's shortlist.
        queries: (n, d) query embeddings, as the env observes them.
        table: (K, d) pool embeddings, as the env observes them (the chosen exemplars' features).
        query_indices: the env query index of each row.
        sets: each row's ``{set: reward}``, as given.
        views: (n, 3, d) the queries' views, for scorers with ``uses_query_views`` (else ``None``).
    """

    picks: torch.Tensor
    rewards: torch.Tensor
    valid: torch.Tensor
    allowed: torch.Tensor
    queries: torch.Tensor
    table: torch.Tensor
    query_indices: list[int]
    sets: list[ScoredSets]
    views: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.query_indices)

    def rows(self, index: torch.Tensor) -> SetBatch:
        """The batch restricted to the rows in ``index`` (a minibatch)."""
        rows = index.tolist()
        return replace(self, picks=self.picks[index], rewards=self.rewards[index], valid=self.valid[index],
                       allowed=self.allowed[index], queries=self.queries[index],
                       query_indices=[self.query_indices[i] for i in rows], sets=[self.sets[i] for i in rows],
                       views=None if self.views is None else self.views[index])


class SetScorer(Protocol):
    """A model the listwise learner trains: ``set_scores`` gives (n, width) logits for a batch's sets
    (padded columns may hold anything; callers mask them). ``uses_query_views``: whether
    :attr:`SetBatch.views` must be filled."""

    uses_query_views: bool

    def set_scores(self, batch: SetBatch) -> torch.Tensor: ...
