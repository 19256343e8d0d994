"""Off-policy listwise training of the matching network on every scored exemplar set. Read top to bottom.

REINFORCE learns from one sampled set per LLM call and forgets it. Here every scored set of a query
is kept and the whole list teaches the network at once, as EPR / LLM-R train retrievers from scored
candidates: the LLM is only asked to score, never to be sampled from, and the data can be reused
for as many epochs as validation allows.

``fit``:

1. Split the training queries: a validation slice (never trained on) and the rest.
2. Explore: for each training query, score its kNN set and random other ``m``-sets of its
   ``candidates`` nearest pool entries (each set placed nearest-last in the prompt, as kNN does), as
   many as the budget allows, plus matching episodes from earlier trajectory logs (``logs``).
3. Train the matching network, initialised to kNN, with a listwise loss: per query, the softmax of
   its sets' rewards / ``target_temperature`` is the target distribution over those sets, and the
   policy's sequence log-probabilities, renormalised over the same sets, the prediction.
4. Select the checkpoint: at kNN (epoch 0) and at a few epochs, the greedy sets of the validation
   queries are scored (counted in the budget, cached); the checkpoint with the largest mean paired
   gain over kNN is kept, so the agent falls back to kNN when learning does not help.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pillow_env.data import examples_fingerprint
from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples
from pillow_env.stats import paired_bootstrap
from pillow_env.trajectories import read_trajectories

from .base import Agent, Budget, greedy_rollout, unwrap
from .matching import MatchingNetwork, load_network, save_network
from .reinforce import _summary_writer

__all__ = ["ListwiseAgent"]


class ListwiseAgent(Agent):
    """The matching network trained off-policy on all scored sets of a shortlist (listwise loss).

    Args:
        candidates: shortlist size C: sets are drawn from, and selections restricted to, the C pool
            entries nearest the query (further capped by the env's own ``candidates``).
        validation_fraction: share of the training queries held out to choose the checkpoint.
        checkpoints: epochs at which the network is validated (epoch 0, kNN, always is).
        target_temperature: temperature of the softmax turning a query's set rewards into targets.
        lr, weight_decay, batch_queries: AdamW settings and queries per gradient step.
        hidden, temperature: see :class:`~agents.matching.MatchingNetwork` (always ``knn_init``).
        logs: trajectory logs (JSONL) whose episodes on the training queries are added to the data.
        seed: seeds the split, the exploration and the network init.

    The :class:`~agents.base.Budget` counts scored sets (LLM calls; cached ones included), for
    exploration and validation together.
    """

    name = "listwise"
    learns = True

    def __init__(self, candidates: int = 8, validation_fraction: float = 0.2,
                 checkpoints: tuple[int, ...] | list[int] = (2, 5, 10, 20, 40), target_temperature: float = 0.05,
                 lr: float = 1e-3, weight_decay: float = 1e-2, batch_queries: int = 16, hidden: int = 256,
                 temperature: float = 0.1, logs: tuple[str, ...] | list[str] = (), seed: int = 0,
                 pool_fingerprint: str | None = None, chosen_epoch: int | None = None) -> None:
        if candidates < 1:
            raise ValueError(f"ListwiseAgent: candidates must be >= 1, got {candidates}")
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"ListwiseAgent: validation_fraction must be in [0, 1), got {validation_fraction}")
        if not checkpoints or any(c < 1 for c in checkpoints):
            raise ValueError(f"ListwiseAgent: checkpoints must be positive epochs, got {list(checkpoints)}")
        if not target_temperature > 0:
            raise ValueError(f"ListwiseAgent: target_temperature must be > 0, got {target_temperature}")
        self.candidates, self.validation_fraction = candidates, validation_fraction
        self.checkpoints = sorted(set(int(c) for c in checkpoints))
        self.target_temperature, self.lr, self.weight_decay = target_temperature, lr, weight_decay
        self.batch_queries, self.hidden, self.temperature = batch_queries, hidden, temperature
        self.logs, self.seed = [str(p) for p in logs], seed
        self.pool_fingerprint, self.chosen_epoch = pool_fingerprint, chosen_epoch
        self.net: MatchingNetwork | None = None
        self.history: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "validation_fraction": self.validation_fraction,
                "checkpoints": self.checkpoints, "target_temperature": self.target_temperature, "lr": self.lr,
                "weight_decay": self.weight_decay, "batch_queries": self.batch_queries, "hidden": self.hidden,
                "temperature": self.temperature, "logs": self.logs, "seed": self.seed,
                "pool_fingerprint": self.pool_fingerprint, "chosen_epoch": self.chosen_epoch}

    # -- shared with selection -------------------------------------------------------------------

    def prepare(self, env) -> None:
        single = env.envs[0] if hasattr(env, "envs") else env
        fingerprint = examples_fingerprint(single.pool)
        if self.net is not None:
            if fingerprint != self.pool_fingerprint:
                raise ValueError("this agent was trained on a different exemplar pool "
                                 f"(fingerprint {self.pool_fingerprint}, env has {fingerprint})")
            return
        torch.manual_seed(self.seed)
        keys = torch.as_tensor(embed_examples(single.encoder, single.pool, with_output=False))
        self.net = MatchingNetwork(keys, single.m, self.hidden, self.temperature, knn_init=True)
        self.pool_fingerprint = fingerprint

    def _similarity(self, env: PillowMatchEnv, query_index: int) -> np.ndarray:
        return embed_examples(env.encoder, env.pool, with_output=False) @ env.query_embeddings[query_index]

    def _shortlist(self, env: PillowMatchEnv, query_index: int) -> np.ndarray:
        """The C nearest pool entries, nearest first (the env's shortlist order when it has one)."""
        c = min(self.candidates, env.candidates or len(env.pool), len(env.pool))
        return np.argsort(-self._similarity(env, query_index), kind="stable")[:c]

    def _prompt_order(self, env: PillowMatchEnv, query_index: int, picks: list[int]) -> list[int]:
        """A set in prompt order: nearest to the query last (so the prompt is a function of the set)."""
        similarity = self._similarity(env, query_index)
        return sorted(picks, key=lambda i: (similarity[i], -i))

    @torch.no_grad()
    def _greedy(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        assert self.net is not None
        allowed = np.zeros(len(env.pool), dtype=bool)
        allowed[self._shortlist(env, query_index)] = True

        def scores(obs: dict[str, Any]) -> np.ndarray:
            query = torch.as_tensor(np.asarray(obs["query"]))[None]
            chosen = torch.as_tensor(np.asarray(obs["chosen"]))[None]
            step = torch.as_tensor([int(obs["step"])])
            out = self.net(query, chosen, step)[0].numpy().astype(np.float64)
            return np.where(allowed, out, -np.inf)

        picks = greedy_rollout(env, query_index, scores)
        return self._prompt_order(env, query_index, picks)

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        self.prepare(env)
        assert self.net is not None
        self.net.eval()
        return self._greedy(env, query_index)

    # -- training --------------------------------------------------------------------------------

    def fit(self, env, budget: Budget | None = None, *, tensorboard: str | Path | None = None,
            progress: bool = True, **kwargs: Any) -> dict[str, Any]:
        base = unwrap(env)
        single: PillowMatchEnv = base.envs[0] if hasattr(base, "envs") else base
        if single.observation != "embedding":
            raise ValueError("ListwiseAgent needs observation='embedding'")
        budget = budget or Budget(generations=2000)
        limit = min(b for b in (budget.episodes, budget.generations) if b is not None)
        self.prepare(single)
        assert self.net is not None
        engine, m, n_queries = single.engine, single.m, len(single.queries)
        rng = np.random.default_rng(self.seed)
        calls = 0

        def score(requests: list[tuple[int, list[int]]], desc: str) -> list[float]:
            nonlocal calls
            rewards: list[float] = []
            for lo in tqdm(range(0, len(requests), 64), desc=desc, unit="batch", disable=not progress, leave=False):
                chunk = requests[lo:lo + 64]
                scored = engine.score([([single.pool[i] for i in sel], single.queries[q]) for q, sel in chunk])
                rewards += [s.reward for s in scored]
            calls += len(requests)
            return rewards

        # 1. Split: a validation slice of the training queries, never trained on.
        order = rng.permutation(n_queries)
        n_val = int(round(self.validation_fraction * n_queries)) if n_queries >= 5 else 0
        val_queries, train_queries = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())

        # 2. Explore: the kNN set and random other sets of each training query's shortlist.
        knn_sets = {q: self._prompt_order(single, q, self._shortlist(single, q)[:m].tolist()) for q in range(n_queries)}
        validation_cost = n_val * (1 + len(self.checkpoints))
        per_query = max(1, (limit - validation_cost) // max(1, len(train_queries)))
        plan: list[tuple[int, list[int]]] = []
        for q in train_queries:
            shortlist = self._shortlist(single, q).tolist()
            others = [list(c) for c in itertools.combinations(shortlist, m)
                      if sorted(c) != sorted(knn_sets[q])]
            rng.shuffle(others)
            plan.append((q, knn_sets[q]))
            plan += [(q, self._prompt_order(single, q, c)) for c in others[:per_query - 1]]
        plan = plan[:max(0, limit - n_val)]
        data: dict[int, dict[tuple[int, ...], float]] = {q: {} for q in train_queries}
        for (q, sel), r in zip(plan, score(plan, "listwise: explore")):
            data[q][tuple(sel)] = r
        allowed_train = set(train_queries)
        for path in self.logs:
            for t in read_trajectories(path, single.pool, single.queries, fingerprint=engine.fingerprint):
                shortlist = set(self._shortlist(single, t.query_index).tolist())
                if (t.query_index in allowed_train and len(t.exemplars) == m and set(t.exemplars) <= shortlist
                        and list(t.exemplars) == self._prompt_order(single, t.query_index, list(t.exemplars))):
                    data[t.query_index].setdefault(tuple(t.exemplars), t.reward)
        batches = self._tensors(single, data)
        table = torch.as_tensor(single.pool_embeddings)

        # 3 + 4. Train listwise; validate kNN (epoch 0) and each checkpoint by paired gain over kNN.
        validation: dict[tuple[int, tuple[int, ...]], float] = {}
        val_knn = np.zeros(0)
        if n_val:
            val_knn = np.array(score([(q, knn_sets[q]) for q in val_queries], "listwise: validate kNN"))
            validation.update({(q, tuple(knn_sets[q])): r for q, r in zip(val_queries, val_knn)})
        best = {"epoch": 0, "gain": 0.0, "state": {k: v.clone() for k, v in self.net.state_dict().items()}}
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        writer = _summary_writer(tensorboard)
        torch.manual_seed(self.seed)
        self.history = []
        for epoch in tqdm(range(1, self.checkpoints[-1] + 1), desc="listwise: train", unit="epoch",
                          disable=not progress):
            self.net.train()
            losses = []
            for idx in torch.randperm(len(batches["rewards"])).split(self.batch_queries):
                loss = self._loss({k: v[idx] for k, v in batches.items()}, table)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else 0.0}
            if epoch in self.checkpoints and n_val:
                self.net.eval()
                picks = {q: tuple(self._greedy(single, q)) for q in val_queries}
                new = [(q, list(s)) for q, s in picks.items() if (q, s) not in validation]
                if calls + len(new) > limit:
                    record["skipped"] = f"validation needs {len(new)} more LLM calls than the budget has left"
                else:
                    validation.update({(q, tuple(s)): r for (q, s), r in zip(new, score(new, "listwise: validate"))})
                    record["llm_calls"] = calls
                    reward = np.array([validation[(q, picks[q])] for q in val_queries])
                    gain = reward - val_knn
                    record["validation_reward"] = float(reward.mean())
                    record["validation_gain"] = paired_bootstrap(gain)
                    if gain.mean() > best["gain"]:
                        best = {"epoch": epoch, "gain": float(gain.mean()),
                                "state": {k: v.clone() for k, v in self.net.state_dict().items()}}
            self.history.append(record)
            if writer is not None:
                writer.add_scalar("listwise/loss", record["loss"], epoch)
                if "validation_gain" in record:
                    writer.add_scalar("listwise/validation_gain", record["validation_gain"]["mean"], epoch)
        if writer is not None:
            writer.close()
        if n_val:  # without a validation slice the last epoch stands
            self.net.load_state_dict(best["state"])
            self.chosen_epoch = best["epoch"]
        else:
            self.chosen_epoch = self.checkpoints[-1]
        self.net.eval()
        scored_sets = sum(len(v) for v in data.values())
        curve = [{"episodes": r["llm_calls"], "reward": r["validation_reward"]}  # reward on validation queries
                 for r in self.history if "validation_reward" in r]
        return {"episodes": calls, "generations": calls, "scored_sets": scored_sets, "chosen_epoch": self.chosen_epoch,
                "validation_gain": best["gain"], "history": curve, "epochs": self.history}

    def _tensors(self, env: PillowMatchEnv, data: dict[int, dict[tuple[int, ...], float]]) -> dict[str, torch.Tensor]:
        """Padded per-query tensors: sets in pick order (nearest first), rewards, valid-set and shortlist masks."""
        rows = [(q, sets) for q, sets in data.items() if len(sets) >= 2 and np.ptp(list(sets.values())) > 1e-9]
        width = max((len(sets) for _, sets in rows), default=1)
        n, m, k = len(rows), env.m, len(env.pool)
        picks = torch.zeros((n, width, m), dtype=torch.long)
        rewards = torch.zeros((n, width))
        valid = torch.zeros((n, width), dtype=torch.bool)
        allowed = torch.zeros((n, k), dtype=torch.bool)
        queries = torch.zeros((n, env.query_embeddings.shape[1]))
        for row, (q, sets) in enumerate(rows):
            for col, (sel, r) in enumerate(sets.items()):
                picks[row, col] = torch.as_tensor(sel[::-1])  # prompt order is nearest last
                rewards[row, col], valid[row, col] = r, True
            allowed[row, torch.as_tensor(self._shortlist(env, q))] = True
            queries[row] = torch.as_tensor(env.query_embeddings[q])
        return {"picks": picks, "rewards": rewards, "valid": valid, "allowed": allowed, "queries": queries}

    def _loss(self, batch: dict[str, torch.Tensor], table: torch.Tensor) -> torch.Tensor:
        """Listwise cross-entropy; ``table`` holds the pool embeddings the observation shows for chosen entries."""
        assert self.net is not None
        picks, valid = batch["picks"], batch["valid"]
        n, width, m = picks.shape
        flat = picks.reshape(n * width, m)
        query = batch["queries"].repeat_interleave(width, 0)
        mask = batch["allowed"].repeat_interleave(width, 0).clone()
        chosen = torch.zeros((n * width, m, table.shape[1]))
        sequence = torch.zeros(n * width)
        for t in range(m):
            logits = self.net(query, chosen, torch.full((n * width,), t), mask)
            sequence = sequence + torch.log_softmax(logits, -1).gather(1, flat[:, t:t + 1]).squeeze(1)
            chosen[:, t] = table[flat[:, t]]
            mask[torch.arange(n * width), flat[:, t]] = False
        predicted = torch.log_softmax(sequence.reshape(n, width).masked_fill(~valid, float("-inf")), -1)
        target = torch.softmax((batch["rewards"] / self.target_temperature).masked_fill(~valid, float("-inf")), -1)
        return -(target * predicted.masked_fill(~valid, 0.0)).sum(-1).mean()

    # -- persistence -----------------------------------------------------------------------------

    def _save_weights(self, path: Path) -> None:
        if self.net is None:
            raise ValueError("nothing to save: fit or prepare the agent first")
        save_network(self.net, path)
        (path / "history.json").write_text(json.dumps(self.history))

    def _load_weights(self, path: Path, trusted: bool = False) -> None:
        self.net = load_network(path, self.hidden, self.temperature, knn_init=True)
        history = path / "history.json"
        self.history = json.loads(history.read_text()) if history.is_file() else []
