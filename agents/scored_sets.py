"""Scored exemplar sets as padded tensors, and what every set scorer offers the listwise learner.

A query's training data is a dict ``{set in prompt order: reward}`` over sets of its shortlist.
:class:`SetBatch` pads many queries' sets into tensors; a :class:`SetScorer` (the matching network
of :mod:`agents.matching`, the linear ranker of :mod:`agents.set_ranker`) scores every set of a
batch, with scores that are logits of a softmax over each query's sets; its :class:`ScorerFamily`
(next to each model) makes, trains, saves and loads it for the listwise learner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from pillow_env.env import PillowMatchEnv

__all__ = ["ScoredSets", "SetBatch", "SetScorer", "SetLoss", "ScorerFamily"]

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


SetLoss = Callable[[torch.Tensor, SetBatch], torch.Tensor]  # (set scores, batch) -> scalar loss


class ScorerFamily(Protocol):
    """One kind of set scorer as the listwise learner makes, trains, saves and loads it, so the
    learner never asks which kind it holds.

    ``settings`` are what cross-validation chooses among (named ``setting``: epochs, penalties);
    ``trained`` yields the model under each of them in turn, each depending only on the settings up
    to it, so the model under ``settings[i]`` is the last of ``trained(..., settings[:i + 1])``.
    ``untrained`` is the setting's value recorded for the fresh model (which selects as kNN does).
    """

    setting: str
    untrained: Any
    default_margin: float

    def settings(self) -> list: ...

    def new(self, env: PillowMatchEnv) -> SetScorer: ...

    def trained(self, env: PillowMatchEnv, batch: SetBatch, settings: list, loss: SetLoss) -> Iterator[SetScorer]: ...

    def transfer(self, scorer: SetScorer, env: PillowMatchEnv) -> SetScorer: ...

    def save(self, scorer: SetScorer | None, folder: Path, history: list) -> None: ...

    def load(self, folder: Path) -> tuple[SetScorer, list]: ...
