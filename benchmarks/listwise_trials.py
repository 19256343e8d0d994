"""Listwise variants tried with bench_listwise_validation.py and not adopted; kept so their recorded
figures (benchmarks/results/listwise-validation-ensemble.json) can be rerun:

    python benchmarks/bench_listwise_validation.py --cache runs/cache.sqlite --seeds 0,1,2,3 \\
        --variants '[{}, {"cls": "benchmarks/listwise_trials.py:EnsembleListwise", "members": 5}]'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents import ListwiseAgent
from agents.matching import MatchingNetwork
from pillow_env.env import PillowMatchEnv


class EnsembleListwise(ListwiseAgent):
    """``members`` networks trained on the same scored sets for the cross-validated epoch count, from
    different initialisations; selection ranks sets by their mean set log-probability."""

    def __init__(self, members: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.members = members
        self.nets: list[MatchingNetwork] = []

    def _cross_validate_and_train(self, single: PillowMatchEnv, data: dict, rng: np.random.Generator,
                                  progress: bool) -> dict[str, np.ndarray]:
        self.nets = []
        gains = super()._cross_validate_and_train(single, data, rng, progress)
        _, usable = self._knn_and_usable(single, data)
        table = torch.as_tensor(single.pool_embeddings)
        everything = self._tensors(single, {q: data[q] for q in usable})
        nets, seed = [self.net], self.seed
        for i in range(1, self.members):
            self.seed = seed + 1000 * i  # another initialisation (and batch order)
            net = self._new_network(single)
            self.seed = seed
            if self.chosen_epochs:
                optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
                for _ in range(self.chosen_epochs):
                    self._epoch(net, optimizer, everything, table)
            nets.append(net.eval())
        self.nets = nets
        return gains

    def _set_scores(self, batch: dict[str, Any], table: torch.Tensor,
                    net: MatchingNetwork | None = None) -> torch.Tensor:
        if net is None and self.nets:
            return torch.stack([super(EnsembleListwise, self)._set_scores(batch, table, n)
                                for n in self.nets]).mean(0)
        return super()._set_scores(batch, table, net)
