"""A linear ranker of exemplar sets: a few similarity features plus a learned bias per pool entry.

``score(query, set) = w . features(query, set) + sum of the members' biases``, where the features are

| feature | meaning |
|---|---|
| ``similarity`` | sum over members of cosine(query, member), both as instruction + input (what kNN ranks by) |
| ``instruction_similarity`` | the same on the instructions alone |
| ``input_similarity`` | the same on the inputs alone |
| ``coherence`` | mean cosine between members (instruction + input) |
| ``output_coherence`` | mean cosine between the members' answers |

Why a model this small: with a few hundred training queries, a ranker with 5 + K parameters
learns more from the likelihood signal than the matching network's two MLPs over 384-d
embeddings. The joint embedding kNN uses mixes what the task is (the instruction) with what it is
applied to (the input); weighing the two apart is the largest single gain, and which pool entries
make good exemplars whatever the query is the second. Judged by generated answers it is no better
than the network, which is why it is an option, not the default (measurements:
``benchmarks/results/listwise-variants.md``). Scores are logits of a
softmax over a query's sets (the same units as the matching network's set log-probabilities).
Symmetric in the members, so it scores a set, not an order; a partial set is scored the same way
(coherence 0 below two members).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pillow_env.encoder import Encoder
from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples, embed_field

from .base import load_history, save_history
from .scored_sets import SetBatch, SetLoss

__all__ = ["FEATURES", "RANKER_WEIGHTS", "SetRanker", "RankerFamily", "example_views", "load_ranker", "save_ranker"]

FEATURES = ("similarity", "instruction_similarity", "input_similarity", "coherence", "output_coherence")
RANKER_WEIGHTS = "set_ranker.safetensors"


def example_views(encoder: Encoder, examples, rows: list[int] | None = None) -> torch.Tensor:
    """(N, 3, d): each example's instruction + input, instruction alone and input alone, embedded
    (memoised for all ``examples``; only ``rows`` of them, in that order, if given)."""
    views = [embed_examples(encoder, examples, with_output=False), embed_field(encoder, examples, "instruction"),
             embed_field(encoder, examples, "input")]
    return torch.as_tensor(np.stack([v if rows is None else v[rows] for v in views], axis=1))


class SetRanker(nn.Module):
    """Scores exemplar sets for queries; all weights start at zero (every set ties).

    Args:
        pool_views: (K, 3, d) the pool's views (:func:`example_views`).
        pool_outputs: (K, d) embeddings of the pool's answers.
        m: the set size it is trained on (saved with it; it can score sets of any size).
    """

    uses_query_views = True

    def __init__(self, pool_views: torch.Tensor, pool_outputs: torch.Tensor, m: int) -> None:
        super().__init__()
        self.m = m
        self.register_buffer("pool_views", pool_views.detach().float().clone())
        self.register_buffer("pool_outputs", pool_outputs.detach().float().clone())
        self.register_buffer("set_size", torch.tensor(m))
        self.weights = nn.Parameter(torch.zeros(len(FEATURES)))
        self.entry_bias = nn.Parameter(torch.zeros(pool_views.shape[0]))

    def features(self, query_views: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        """(n, width, F) features of ``picks`` (n, width, members) for queries ``query_views`` (n, 3, d)."""
        members = self.pool_views[picks]  # (n, width, members, 3, d)
        similarity = torch.einsum("nwmvd,nvd->nwv", members, query_views)
        size = picks.shape[-1]
        pairs = [(i, j) for i in range(size) for j in range(i + 1, size)]
        coherence = members.new_zeros(picks.shape[:2] + (2,))
        for i, j in pairs:
            coherence[..., 0] += (members[..., i, 0, :] * members[..., j, 0, :]).sum(-1)
            coherence[..., 1] += (self.pool_outputs[picks[..., i]] * self.pool_outputs[picks[..., j]]).sum(-1)
        return torch.cat([similarity, coherence / max(len(pairs), 1)], -1)

    def forward(self, query_views: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        """(n, width) scores of the sets in ``picks`` (n, width, members)."""
        return self.features(query_views, picks) @ self.weights + self.entry_bias[picks].sum(-1)

    def set_scores(self, batch: SetBatch) -> torch.Tensor:
        """(n, width) scores of a batch's sets (needs ``batch.views``)."""
        return self(batch.views, batch.picks)

    def penalty(self) -> torch.Tensor:
        """Squared L2 norm of every parameter: what pulls the ranker back to ties."""
        return (self.weights ** 2).sum() + (self.entry_bias ** 2).sum()


def save_ranker(ranker: SetRanker | None, folder: Path, history: list) -> None:
    if ranker is None:
        raise ValueError("nothing to save: fit or prepare the agent first")
    save_file({k: v.contiguous() for k, v in ranker.state_dict().items()}, str(folder / RANKER_WEIGHTS))
    save_history(folder, history)


def load_ranker(folder: Path) -> tuple[SetRanker, list]:
    """A saved ranker and its history; the pool's embeddings come with the weights."""
    state = load_file(str(folder / RANKER_WEIGHTS))
    ranker = SetRanker(state["pool_views"], state["pool_outputs"], int(state["set_size"]))
    ranker.load_state_dict(state)
    return ranker.eval(), load_history(folder)


@dataclass
class RankerFamily:
    """The linear ranker as the listwise learner's set scorer (:class:`~agents.scored_sets.ScorerFamily`):
    for each L2 penalty, a fresh ranker minimising the loss plus the penalty (convex: L-BFGS);
    cross-validation chooses the penalty. Its per-entry biases belong to its own pool, so it does
    not transfer to another."""

    penalties: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3])
    setting = "penalty"
    untrained = None
    default_margin = 0.0  # chosen on held-out training queries (benchmarks/results/listwise-variants.md)

    def settings(self) -> list[float]:
        return list(self.penalties)

    def new(self, env: PillowMatchEnv) -> SetRanker:
        outputs = torch.as_tensor(embed_field(env.encoder, env.pool, "output"))
        return SetRanker(example_views(env.encoder, env.pool), outputs, env.m)

    def trained(self, env: PillowMatchEnv, batch: SetBatch, settings: list[float], loss: SetLoss
                ) -> Iterator[SetRanker]:
        """A fresh ranker per penalty, each fitted to convergence."""
        for penalty in settings:
            ranker = self.new(env)
            optimizer = torch.optim.LBFGS(ranker.parameters(), max_iter=200, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                value = loss(ranker.set_scores(batch), batch) + penalty * ranker.penalty()
                value.backward()
                return value

            ranker.train()
            optimizer.step(closure)
            yield ranker.eval()

    def transfer(self, ranker: SetRanker, env: PillowMatchEnv) -> SetRanker:
        raise ValueError("transfer: model='linear' learns a bias per pool entry, which does not carry over to "
                         "another pool; use model='matching'")

    def save(self, ranker: SetRanker | None, folder: Path, history: list) -> None:
        save_ranker(ranker, folder, history)

    def load(self, folder: Path) -> tuple[SetRanker, list]:
        return load_ranker(folder)
