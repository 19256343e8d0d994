"""Distilled single-exemplar scores: the matching network taught which single exemplars help. Read top to bottom.

Set-level learners (REINFORCE, listwise) see a few scored sets per training query and plateau just
above kNN; the retrievers that beat BM25 in the literature (EPR, LLM-R, UDR; CEIL starts from one)
learn instead from each candidate scored *alone*, normalised per query, and distil those scores
into a retriever. This agent does that with PILLOW's matching network:

1. Score: for every training query, each of its ``candidates`` nearest pool entries alone, as a
   one-exemplar prompt, by the env's reward, as every learner trains on it: best the likelihood of
   the reference (``reward="loglik"``, CLI ``--train-reward loglik``: one forward pass, no
   decoding); the generation reward works too (backends that cannot score likelihoods). Cached by
   prompt, so a rerun or another learner pays nothing.
2. Target: per query, the scores standardised (mean 0, sd 1) and softmaxed at ``target_temperature``.
3. Distil: the kNN-initialised network (its pool side also sees each exemplar's *answer*) trained
   so that its first pick's distribution over the shortlist matches the target (KL), and its second
   pick, after the best one, matches the target over the rest; plus ``contrastive`` x an in-batch
   term that ranks the query's best candidate above the other queries' candidates. AdamW's weight
   decay pulls the zero-initialised corrections back toward kNN.
4. Choose: settings (target temperature x epochs) by cross-validation over training queries (folds
   keep an underlying example's templates together, so no answer leaks across), each
   held-out query judged by the single scores of the m candidates the model ranks first minus those
   of kNN's m; the *smallest* setting within one standard error of the best, and kNN itself unless
   that setting's gain is above zero by more than its standard error: a rule float noise cannot flip.

Selection: the ``m`` shortlist entries the network ranks first, the best placed last (next to the
query, where kNN puts the nearest), unless they beat kNN's ``m`` by less than ``margin`` in score:
untrained (or when kNN is kept), that is exactly kNN's set in kNN's order.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples, embed_field

from .base import Agent, Budget, FitRecord, check_pool, first_env, summary_writer
from .matching import MatchingNetwork, load_network, save_network
from .single_scores import normalise_per_query, score_singles

__all__ = ["DistillAgent"]


class DistillAgent(Agent):
    """The matching network distilled from single-exemplar scores of each training query's shortlist.

    Args:
        candidates: shortlist size C: the nearest pool entries scored alone per training query, and
            the entries selection chooses among.
        target_temperatures: softmax temperatures (on per-query z-scores) cross-validation chooses among.
        epochs: the most epochs cross-validation may choose.
        folds: cross-validation folds over the scored training queries.
        contrastive: weight of the in-batch term (the query's best candidate against every candidate
            of the other queries in the minibatch).
        answers: whether the pool side sees each exemplar's answer embedding.
        lr, weight_decay, batch_queries, hidden, temperature: the network's AdamW settings, queries per
            step, MLP width and logit temperature (see :class:`~agents.matching.MatchingNetwork`).
        margin: the learned set replaces kNN's only if its summed score (logits: cosine / temperature
            at the start) is higher by at least this much, so float rounding never departs from kNN.
        seed: seeds the query order under a budget, the folds and the network init.
        pool_fingerprint, chosen_temperature, chosen_epochs: set by ``fit`` (kept in the config).

    The :class:`~agents.base.Budget` caps the (query, exemplar) pairs scored, ``candidates`` per
    training query; the LLM calls are the pairs not already in the cache, so never more.
    """

    name = "distill"
    learns = True

    def __init__(self, candidates: int = 8, target_temperatures: tuple[float, ...] | list[float] = (0.5, 1.0),
                 epochs: int = 30, folds: int = 5, contrastive: float = 0.2, answers: bool = True,
                 lr: float = 1e-3, weight_decay: float = 1e-2, batch_queries: int = 32, hidden: int = 256,
                 temperature: float = 0.1, margin: float = 0.1, seed: int = 0,
                 pool_fingerprint: str | None = None, chosen_temperature: float | None = None,
                 chosen_epochs: int | None = None) -> None:
        if candidates < 2:
            raise ValueError(f"DistillAgent: candidates must be >= 2, got {candidates}")
        if not target_temperatures or min(target_temperatures) <= 0:
            raise ValueError(f"DistillAgent: target_temperatures must be numbers > 0, got {target_temperatures}")
        if epochs < 1 or folds < 2:
            raise ValueError(f"DistillAgent: epochs must be >= 1 and folds >= 2, got {epochs} and {folds}")
        if not margin >= 0:
            raise ValueError(f"DistillAgent: margin must be >= 0, got {margin}")
        if contrastive < 0:
            raise ValueError(f"DistillAgent: contrastive must be >= 0, got {contrastive}")
        self.candidates, self.target_temperatures = candidates, [float(t) for t in target_temperatures]
        self.epochs, self.folds, self.contrastive, self.answers = epochs, folds, float(contrastive), answers
        self.lr, self.weight_decay, self.batch_queries = lr, weight_decay, batch_queries
        self.hidden, self.temperature, self.seed = hidden, temperature, seed
        self.margin = float(margin)
        self.pool_fingerprint, self.chosen_temperature, self.chosen_epochs = \
            pool_fingerprint, chosen_temperature, chosen_epochs
        self.net: MatchingNetwork | None = None
        self.history: list[dict[str, Any]] = []  # cross-validation: gain and standard error per setting

    def config(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "target_temperatures": self.target_temperatures,
                "epochs": self.epochs, "folds": self.folds, "contrastive": self.contrastive,
                "answers": self.answers, "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_queries": self.batch_queries, "hidden": self.hidden, "temperature": self.temperature,
                "margin": self.margin, "seed": self.seed, "pool_fingerprint": self.pool_fingerprint,
                "chosen_temperature": self.chosen_temperature, "chosen_epochs": self.chosen_epochs}

    def prepare(self, env) -> None:
        if self.net is not None:
            check_pool(env, self.pool_fingerprint)
            return
        self.pool_fingerprint = check_pool(env, None)
        self.net = self._new_network(first_env(env))

    def _new_network(self, env: PillowMatchEnv) -> MatchingNetwork:
        """The kNN start: scores exactly by query-pool cosine until trained."""
        torch.manual_seed(self.seed)
        keys = torch.as_tensor(embed_examples(env.encoder, env.pool, with_output=False))
        answers = torch.as_tensor(embed_field(env.encoder, env.pool, "output")) if self.answers else None
        return MatchingNetwork(keys, env.m, self.hidden, self.temperature, knn_init=True, answers=answers)

    # -- training --------------------------------------------------------------------------------

    def fit(self, env, budget: Budget | None = None, *, tensorboard: str | Path | None = None,
            progress: bool = True, **kwargs: Any) -> FitRecord:
        single = first_env(env)
        if single.observation != "embedding":
            raise ValueError("DistillAgent needs observation='embedding'")
        self.prepare(single)
        c = self._width(single)
        budget = budget or Budget(llm_calls=c * len(single.queries))  # default: every training query
        limit = min(b for b in (budget.episodes, budget.llm_calls) if b is not None)
        n_queries = min(len(single.queries), limit // c)
        if n_queries < 1:
            raise ValueError(f"DistillAgent: a budget of {limit} LLM calls is less than one training query's "
                             f"{c} single-exemplar passes")
        rng = np.random.default_rng(self.seed)
        self.history = []
        queries = np.sort(rng.permutation(len(single.queries))[:n_queries])
        shortlists = self.shortlists(single, queries)
        before = single.engine.stats.llm_calls
        scores = self._score(single, queries, shortlists, progress)                        # 1.
        llm_calls = single.engine.stats.llm_calls - before
        z = normalise_per_query(scores)                                                     # 2.
        chosen = None  # one query cannot be cross-validated: kNN stays
        if n_queries >= 2:
            gains, settings = self._cross_validate(single, queries, shortlists, scores, z, rng, progress)  # 4.
            chosen = self._choose(gains, settings)
        self.net = self._new_network(single)                                                # kNN, unless
        if chosen is not None:                                                              # 3.
            *_, self.net = self._train(single, queries, shortlists, z, *chosen)
        self.chosen_temperature, self.chosen_epochs = (None, 0) if chosen is None else chosen
        self.net.eval()
        writer = summary_writer(tensorboard)
        if writer is not None:
            for record in self.history:
                writer.add_scalar(f"distill/validation_gain_tau{record['target_temperature']}", record["gain"],
                                  record["epochs"])
            writer.close()
        return FitRecord(int(scores.size), llm_calls, [],
                         {"scored_queries": int(n_queries), "chosen_temperature": self.chosen_temperature,
                          "chosen_epochs": self.chosen_epochs, "validation": self.history})

    def _width(self, env: PillowMatchEnv) -> int:
        return min(self.candidates, env.candidates or len(env.pool), len(env.pool))

    def _score(self, single: PillowMatchEnv, queries: np.ndarray, shortlists: np.ndarray, progress: bool) -> np.ndarray:
        return score_singles(single.engine, single.pool, [single.queries[q] for q in queries], shortlists,
                             progress=progress, desc="distill: single-exemplar scores")

    def _cross_validate(self, single: PillowMatchEnv, queries: np.ndarray, shortlists: np.ndarray,
                        scores: np.ndarray, z: np.ndarray, rng: np.random.Generator, progress: bool
                        ) -> tuple[np.ndarray, list[tuple[float, int]]]:
        """(settings, queries) out-of-fold gains: the held-out query's single scores of the model's
        first m candidates minus those of kNN's m (the m nearest), summed; and the settings."""
        settings = [(tau, e) for tau in self.target_temperatures for e in range(1, self.epochs + 1)]
        gains = np.zeros((len(settings), len(queries)))
        row_of = {s: i for i, s in enumerate(settings)}
        m = single.m
        knn = scores[:, :m].sum(1)
        folds = _group_folds([single.queries[q] for q in queries], min(self.folds, len(queries)), rng)
        work = tqdm(total=len(folds) * len(self.target_temperatures), desc="distill: cross-validate",
                    unit="fit", disable=not progress)
        for held in folds:
            train = np.setdiff1d(np.arange(len(queries)), held)
            for tau in self.target_temperatures:
                for epoch, net in enumerate(self._train(single, queries[train], shortlists[train], z[train], tau,
                                                        self.epochs), start=1):
                    picks = self._picks(net, single, queries[held], shortlists[held])
                    picked = np.take_along_axis(scores[held], picks, axis=1).sum(1)
                    gains[row_of[(tau, epoch)], held] = picked - knn[held]
                work.update()
        work.close()
        self.history = [{"target_temperature": tau, "epochs": e, "gain": float(gains[i].mean()),
                         "standard_error": float(gains[i].std(ddof=1) / np.sqrt(gains.shape[1]))}
                        for i, (tau, e) in enumerate(settings)]
        return gains, settings

    @staticmethod
    def _choose(gains: np.ndarray, settings: list[tuple[float, int]]) -> tuple[float, int] | None:
        """The smallest setting (fewest epochs, then the first temperature) whose mean gain is within one
        standard error of the best; ``None`` (kNN) unless that gain exceeds its own standard error."""
        means = gains.mean(1)
        errors = gains.std(1, ddof=1) / np.sqrt(gains.shape[1])
        best = int(means.argmax())
        within = [i for i in range(len(settings)) if means[i] >= means[best] - errors[best]]
        pick = min(within, key=lambda i: (settings[i][1], settings[i][0]))
        return settings[pick] if means[pick] > errors[pick] else None

    def _train(self, single: PillowMatchEnv, queries: np.ndarray, shortlists: np.ndarray, z: np.ndarray,
               tau: float, epochs: int):
        """A fresh kNN-initialised network, yielded after each epoch of distillation."""
        net = self._new_network(single)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        query_emb = torch.as_tensor(single.query_embeddings[queries])
        table = torch.as_tensor(single.pool_embeddings)
        short = torch.as_tensor(shortlists, dtype=torch.long)
        target = torch.softmax(torch.as_tensor(z, dtype=torch.float32) / tau, -1)          # (n, C)
        best = short.gather(1, torch.as_tensor(z.argmax(1))[:, None]).squeeze(1)          # (n,)
        order = torch.Generator().manual_seed(self.seed)
        for _ in range(epochs):
            net.train()
            for idx in torch.randperm(len(queries), generator=order).split(self.batch_queries):
                loss = self._loss(net, query_emb[idx], short[idx], target[idx], best[idx], table)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            net.eval()
            yield net

    def _loss(self, net: MatchingNetwork, query: torch.Tensor, short: torch.Tensor, target: torch.Tensor,
              best: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """KL(target || first pick) + KL(target without the best || second pick after it) over the
        shortlist, plus the in-batch term."""
        n, c = short.shape
        d = query.shape[1]
        keys = net.keys()  # the pool side once per step: it is most of the work
        chosen = torch.zeros((n, net.m, d))
        logits = net(query, chosen, torch.zeros(n, dtype=torch.long), keys=keys)           # (n, K)
        first = logits.gather(1, short)                                                    # (n, C)
        loss = _kl(target, first)
        if net.m > 1:
            chosen = chosen.clone()
            chosen[:, 0] = table[best]
            second = net(query, chosen, torch.ones(n, dtype=torch.long), keys=keys).gather(1, short)
            rest = short != best[:, None]
            loss = loss + _kl(target * rest, second.masked_fill(~rest, float("-inf")))
        if self.contrastive > 0 and n > 1:
            pooled = torch.unique(short.reshape(-1))
            logits = logits[:, pooled]
            positive = (pooled[None, :] == best[:, None]).float().argmax(1)
            loss = loss + self.contrastive * nn.functional.cross_entropy(logits, positive)
        return loss

    # -- selection -------------------------------------------------------------------------------

    def shortlists(self, env: PillowMatchEnv, queries) -> np.ndarray:
        """(n, C) each query's C nearest pool entries, nearest first (kNN's order, ties to the lower index;
        the similarity computed exactly as kNN computes it, so near-ties fall the same way)."""
        keys = embed_examples(env.encoder, env.pool, with_output=False)
        width = self._width(env)
        return np.stack([np.argsort(-(keys @ env.query_embeddings[q]), kind="stable")[:width]
                         for q in np.asarray(queries).tolist()])

    @torch.no_grad()
    def _picks(self, net: MatchingNetwork, env: PillowMatchEnv, queries: np.ndarray, shortlists: np.ndarray
               ) -> np.ndarray:
        """(n, m) shortlist positions to select, best first: the m the network ranks first, unless their
        summed score beats kNN's m (positions 0..m-1) by less than ``margin``: then kNN's, nearest first."""
        n, m = len(queries), env.m
        query = torch.as_tensor(env.query_embeddings[np.asarray(queries)])
        logits = net(query, torch.zeros((n, net.m, query.shape[1])), torch.zeros(n, dtype=torch.long))
        scores = logits.gather(1, torch.as_tensor(shortlists, dtype=torch.long)).double().numpy()
        ranked = np.argsort(-scores, axis=1, kind="stable")[:, :m]
        learned = np.take_along_axis(scores, ranked, axis=1).sum(1)
        keep = learned - scores[:, :m].sum(1) < self.margin
        ranked[keep] = np.arange(m)
        return ranked

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        return self.select_many(env, [query_index])[0]

    def select_many(self, env: PillowMatchEnv, query_indices: list[int]) -> list[list[int]]:
        """The m shortlist entries ranked first, best last (no LLM call; all queries in one pass)."""
        self.prepare(env)
        assert self.net is not None
        if not query_indices:
            return []
        queries = np.asarray(query_indices)
        shortlists = self.shortlists(env, queries)
        positions = self._picks(self.net.eval(), env, queries, shortlists)
        picks = np.take_along_axis(shortlists, positions, axis=1)[:, ::-1]
        return [[int(i) for i in row] for row in picks]

    def transfer(self, env) -> DistillAgent:
        """This trained agent re-pointed at ``env``'s pool (its MLPs take any embedding); no LLM call."""
        if self.net is None:
            raise ValueError("transfer: fit or load the agent first")
        single = first_env(env)
        moved = copy.deepcopy(self)
        fresh = moved._new_network(single)
        fresh.load_state_dict({k: v for k, v in moved.net.state_dict().items() if k not in ("prompts", "answers")},
                              strict=False)
        moved.net, moved.pool_fingerprint = fresh, check_pool(single, None)
        return moved

    # -- persistence -----------------------------------------------------------------------------

    def _save_weights(self, path: Path) -> None:
        save_network(self.net, path, self.history)

    def _load_weights(self, path: Path, trusted: bool = False) -> None:
        self.net, self.history = load_network(path, self.hidden, self.temperature, knn_init=True)


def _group_folds(queries: list, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Positions of ``queries`` in ``folds`` folds, each underlying example (``metadata["example"]``,
    as the ``t0`` suite records it; else the query itself) whole in one fold. Templates of one
    example share its answer: split across folds, a held-out query's answer would be learned from
    its twin, and validation would promise what a new query cannot give."""
    keys = [q.metadata.get("example", ("query", i)) if isinstance(q.metadata, dict) else ("query", i)
            for i, q in enumerate(queries)]
    groups = list(dict.fromkeys(keys))
    fold_of = {g: f % folds for f, g in enumerate(groups[i] for i in rng.permutation(len(groups)))}
    return [np.flatnonzero([fold_of[k] == f for k in keys]) for f in range(folds)]


def _kl(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(target || softmax(logits)), rows of ``target`` renormalised; -inf logits
    (masked) must carry zero target."""
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
    log_p = torch.log_softmax(logits, -1)
    terms = torch.where(target > 0, target * (torch.log(target.clamp_min(1e-12)) - log_p), torch.zeros_like(target))
    return terms.sum(-1).mean()
