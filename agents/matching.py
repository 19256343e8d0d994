"""PILLOW's matching network: a prompt MLP and a state MLP whose dot products score the pool.

``logits[k] = <state_mlp(state), prompt_mlp(prompt_k)> / temperature``, masked to the prompts not
chosen yet, then a softmax. The state is the query embedding, the mean embedding of the prompts
chosen so far, and the step. Both MLPs are residual with a zero-initialised output layer when
``knn_init`` is set: the untrained network then scores exactly by query-prompt cosine (kNN), and
RL only has to learn the corrections.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples

from .base import load_history, save_history
from .scored_sets import SetBatch, SetLoss

__all__ = ["MatchingNetwork", "MatchingFamily", "save_network", "load_network", "WEIGHTS_NAME"]

WEIGHTS_NAME = "matching_network.safetensors"


class _Residual(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int, zero_init: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MatchingNetwork(nn.Module):
    """Scores every pool prompt for a batch of states.

    Args:
        prompts: (K, d) prompt embeddings (stored as a buffer, saved with the weights).
        m: exemplars per episode (the step is one-hot encoded over ``m + 1`` values).
        hidden: width of both MLPs.
        temperature: softmax temperature on the dot products (cosines at init).
        knn_init: start as a kNN ranker (see module docstring).
        answers: optional (K, d) embeddings of the prompts' answers, fed to the prompt MLP beside the
            prompt embeddings (the residual stays on the prompt embedding, so the kNN start holds): an
            exemplar's answer then shapes its score, as retrievers that see the candidate's answer do.
    """

    uses_query_views = False

    def __init__(self, prompts: torch.Tensor, m: int, hidden: int = 256, temperature: float = 0.1,
                 knn_init: bool = True, answers: torch.Tensor | None = None) -> None:
        super().__init__()
        k, d = prompts.shape
        if answers is not None and answers.shape != prompts.shape:
            raise ValueError(f"MatchingNetwork: answers must be shaped like prompts {tuple(prompts.shape)}, "
                             f"got {tuple(answers.shape)}")
        self.m, self.temperature = m, temperature
        self.register_buffer("prompts", prompts.detach().float().clone())
        self.register_buffer("answers", None if answers is None else answers.detach().float().clone())
        self.prompt_mlp = _Residual(d if answers is None else 2 * d, d, hidden, knn_init)
        self.state_mlp = _Residual(2 * d + m + 1, d, hidden, knn_init)

    def forward(self, query: torch.Tensor, chosen: torch.Tensor, step: torch.Tensor,
                mask: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K); ``mask`` (B, K) True where a prompt may still be chosen; ``keys``: :meth:`keys`,
        when the caller scores several batches of states against the same pool side."""
        n_chosen = step.clamp(min=1).unsqueeze(-1).float()
        step_onehot = nn.functional.one_hot(step.long(), self.m + 1).float()
        return self.score_states(torch.cat([query, chosen.sum(1) / n_chosen, step_onehot], dim=-1), mask, keys)

    def score_states(self, states: torch.Tensor, mask: torch.Tensor | None = None,
                     keys: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K) of states already laid out as ``[query, mean chosen, one-hot step]`` (B, 2d + m + 1),
        the form SB3's feature extractor gives (:mod:`agents.sb3`)."""
        d = self.prompts.shape[1]
        state = states[:, :d] + self.state_mlp(states)
        logits = state @ (self.keys() if keys is None else keys).T / self.temperature
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits

    def keys(self) -> torch.Tensor:
        """(K, d) the pool side: each prompt embedding plus its learned correction."""
        features = self.prompts if self.answers is None else torch.cat([self.prompts, self.answers], -1)
        return self.prompts + self.prompt_mlp(features)

    def set_scores(self, batch: SetBatch) -> torch.Tensor:
        """(n, width) log-probabilities of picking each set of ``batch`` member by member, in pick order,
        within each query's shortlist: the listwise learner's set scores."""
        picks = batch.picks
        n, width, m = picks.shape
        flat = picks.reshape(n * width, m)
        query = batch.queries.repeat_interleave(width, 0)
        mask = batch.allowed.repeat_interleave(width, 0).clone()
        chosen = torch.zeros((n * width, self.m, batch.table.shape[1]))
        sequence = torch.zeros(n * width)
        for t in range(m):
            logits = self(query, chosen, torch.full((n * width,), t), mask)
            sequence = sequence + torch.log_softmax(logits, -1).gather(1, flat[:, t:t + 1]).squeeze(1)
            chosen = chosen.clone()
            chosen[:, t] = batch.table[flat[:, t]]
            mask[torch.arange(n * width), flat[:, t]] = False
        return sequence.reshape(n, width)


def save_network(net: MatchingNetwork | None, folder: Path, history: list) -> None:
    """The weights (safetensors) and the training history (JSON) of a matching-network agent."""
    if net is None:
        raise ValueError("nothing to save: fit or prepare the agent first")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS_NAME))
    save_history(folder, history)


def load_network(folder: Path, hidden: int, temperature: float, knn_init: bool) -> tuple[MatchingNetwork, list]:
    """Rebuild a saved network and its history; the pool embeddings and ``m`` come from the weights."""
    state = load_file(str(folder / WEIGHTS_NAME))
    prompts = state["prompts"]
    m = state["state_mlp.net.0.weight"].shape[1] - 2 * prompts.shape[1] - 1
    net = MatchingNetwork(prompts, m, hidden, temperature, knn_init, answers=state.get("answers"))
    net.load_state_dict(state)
    return net.eval(), load_history(folder)


@dataclass
class MatchingFamily:
    """The matching network as the listwise learner's set scorer (:class:`~agents.scored_sets.ScorerFamily`):
    kNN-initialised, trained by AdamW on minibatches of queries; cross-validation chooses the
    number of epochs (1..``epochs``), 0 meaning the untrained network. Its MLPs take any embedding,
    so a trained network transfers to another pool."""

    hidden: int = 256
    temperature: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_queries: int = 16
    epochs: int = 40
    seed: int = 0
    setting = "epochs"
    untrained = 0
    default_margin = 0.5  # chosen on held-out training queries (benchmarks/results/listwise-variants.md)

    def settings(self) -> list[int]:
        return list(range(1, self.epochs + 1))

    def new(self, env: PillowMatchEnv) -> MatchingNetwork:
        torch.manual_seed(self.seed)
        keys = torch.as_tensor(embed_examples(env.encoder, env.pool, with_output=False))
        return MatchingNetwork(keys, env.m, self.hidden, self.temperature, knn_init=True)

    def trained(self, env: PillowMatchEnv, batch: SetBatch, settings: list[int], loss: SetLoss
                ) -> Iterator[MatchingNetwork]:
        """One network, yielded after each further epoch."""
        net = self.new(env)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in settings:
            net.train()
            for idx in torch.randperm(len(batch)).split(self.batch_queries):
                part = batch.rows(idx)
                value = loss(net.set_scores(part), part)
                optimizer.zero_grad()
                value.backward()
                optimizer.step()
            net.eval()
            yield net

    def transfer(self, net: MatchingNetwork, env: PillowMatchEnv) -> MatchingNetwork:
        """``net`` (modified in place) scoring ``env``'s pool with the weights it learned."""
        keys = torch.as_tensor(embed_examples(env.encoder, env.pool, with_output=False)).float()
        if keys.shape[1] != net.prompts.shape[1]:
            raise ValueError(f"transfer: the env's encoder gives {keys.shape[1]}-dim embeddings, the agent was "
                             f"trained on {net.prompts.shape[1]}")
        if env.m != net.m:
            raise ValueError(f"transfer: the agent picks m={net.m} exemplars, the env m={env.m}")
        net.prompts = keys
        return net

    def save(self, net: MatchingNetwork | None, folder: Path, history: list) -> None:
        save_network(net, folder, history)

    def load(self, folder: Path) -> tuple[MatchingNetwork, list]:
        return load_network(folder, self.hidden, self.temperature, knn_init=True)
