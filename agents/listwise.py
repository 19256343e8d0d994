"""Off-policy listwise training of a set scorer on every scored exemplar set. Read top to bottom.

REINFORCE learns from one sampled set per LLM call and forgets it. Here every scored set of a query
is kept and the whole list teaches the model at once, as EPR / LLM-R train retrievers from scored
candidates: the LLM is only asked to score, never to be sampled from, and the data is reused as far
as validation allows. The model (a :class:`~agents.scored_sets.SetScorer`) is PILLOW's matching
network, initialised to kNN (the default), or a linear ranker over a few similarity features with
a bias per pool entry (``model="linear"``, :mod:`agents.set_ranker`).

``fit``:

1. Explore: for every training query, score its kNN set and random other ``m``-sets of its
   ``candidates`` nearest pool entries (each set placed nearest-last in the prompt, as kNN does), as
   many as the budget allows, by the env's reward (best the likelihood signal, ``reward="loglik"``:
   the reference's mean token log-likelihood after the prompt, one forward pass and no decoding);
   add matching episodes from earlier trajectory logs (``logs``).
2. Cross-validate over queries: in each of ``folds`` folds, train on the other queries under each
   setting (each epoch count of the network; each L2 penalty of the ranker) and take for each
   held-out query the scored set the model ranks first; its reward minus the kNN set's is the
   paired validation gain (no extra LLM call). Plain kNN is a candidate with gain 0.
3. Train on all queries with the setting of the largest mean out-of-fold gain (kNN stays in place
   when learning does not help). The loss is listwise: per query, the softmax of its sets' rewards /
   ``target_temperature`` is the target distribution over those sets, the softmax of the model's
   set scores the prediction.

Selection ranks every ``m``-set of the shortlist by the model's score (one member at a time when
there are too many sets), keeps kNN's set unless beaten by ``margin``, and places the set
nearest-last. Why the defaults are what they are: ``benchmarks/results/listwise-variants.md``.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples
from pillow_env.stats import paired_bootstrap
from pillow_env.trajectories import read_trajectories

from .base import Agent, Budget, FitRecord, check_pool, first_env, summary_writer
from .matching import MatchingFamily
from .scored_sets import ScoredSets, ScorerFamily, SetBatch, SetScorer
from .set_ranker import RankerFamily, example_views

__all__ = ["ListwiseAgent"]

MAX_ENUMERATED_SETS = 4096
MODELS = ("matching", "linear")


class ListwiseAgent(Agent):
    """A set scorer trained off-policy on all scored sets of a shortlist (listwise loss).

    Args:
        candidates: shortlist size C: sets are drawn from, and selections restricted to, the C pool
            entries nearest the query (further capped by the env's own ``candidates``).
        model: ``"matching"`` (default): PILLOW's :class:`~agents.matching.MatchingNetwork`;
            ``"linear"``: :class:`~agents.set_ranker.SetRanker`, 5 similarity weights and a bias per
            pool entry.
        epochs: the most epochs cross-validation may choose for the matching network.
        penalties: the L2 penalties cross-validation chooses among for the linear ranker.
        folds: cross-validation folds over the training queries.
        target_temperature: temperature of the softmax turning a query's set rewards into targets.
        lr, weight_decay, batch_queries: the matching network's AdamW settings and queries per step.
        hidden, temperature: see :class:`~agents.matching.MatchingNetwork` (always ``knn_init``).
        margin: selection keeps kNN's set unless the model's best set beats it by at least this much in
            score (0: always the best-ranked set). Default per model: 0 for the ranker, 0.5 for the
            network. Applies where all sets are ranked.
        logs: trajectory logs (JSONL) whose episodes on the training queries are added to the data.
        seed: seeds the exploration, the folds and the network init.
        chosen_epochs, chosen_penalty: what cross-validation chose (set by ``fit``, kept in the config).

    The explored sets are scored by the env's reward, as every learner trains on it: build the env
    with ``reward="loglik"`` (CLI: ``--train-reward loglik``) for the reference's likelihood, one
    forward pass and no decoding. The :class:`~agents.base.Budget` counts scored sets (cached ones
    included).
    """

    name = "listwise"
    learns = True

    def __init__(self, candidates: int = 8, model: str = "matching", epochs: int = 40,
                 penalties: tuple[float, ...] | list[float] = (0.01, 0.03, 0.1, 0.3), folds: int = 5,
                 target_temperature: float = 0.05, lr: float = 1e-3, weight_decay: float = 1e-2,
                 batch_queries: int = 16, hidden: int = 256, temperature: float = 0.1,
                 margin: float | None = None, logs: tuple[str, ...] | list[str] = (),
                 seed: int = 0, pool_fingerprint: str | None = None, chosen_epochs: int | None = None,
                 chosen_penalty: float | None = None) -> None:
        if candidates < 1:
            raise ValueError(f"ListwiseAgent: candidates must be >= 1, got {candidates}")
        if model not in MODELS:
            raise ValueError(f"ListwiseAgent: model must be one of {MODELS}, got {model!r}")
        if epochs < 1 or folds < 2:
            raise ValueError(f"ListwiseAgent: epochs must be >= 1 and folds >= 2, got {epochs} and {folds}")
        if not penalties or min(penalties) <= 0:
            raise ValueError(f"ListwiseAgent: penalties must be a non-empty list of numbers > 0, got {penalties}")
        if not target_temperature > 0:
            raise ValueError(f"ListwiseAgent: target_temperature must be > 0, got {target_temperature}")
        if model == "matching":
            self.family: ScorerFamily = MatchingFamily(hidden, temperature, lr, weight_decay, batch_queries,
                                                       epochs, seed)
        else:
            self.family = RankerFamily([float(p) for p in penalties])
        margin = self.family.default_margin if margin is None else margin
        if not margin >= 0:
            raise ValueError(f"ListwiseAgent: margin must be >= 0, got {margin}")
        self.candidates, self.model, self.epochs = candidates, model, epochs
        self.penalties, self.folds = [float(p) for p in penalties], folds
        self.target_temperature, self.lr, self.weight_decay = target_temperature, lr, weight_decay
        self.batch_queries, self.hidden, self.temperature = batch_queries, hidden, temperature
        self.margin, self.logs, self.seed = margin, [str(p) for p in logs], seed
        self.pool_fingerprint, self.chosen_epochs, self.chosen_penalty = pool_fingerprint, chosen_epochs, chosen_penalty
        self.net: SetScorer | None = None
        self.history: list[dict[str, Any]] = []
        self._scorer: RewardEngine | None = None

    def config(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "model": self.model, "epochs": self.epochs,
                "penalties": self.penalties, "folds": self.folds, "target_temperature": self.target_temperature,
                "lr": self.lr, "weight_decay": self.weight_decay, "batch_queries": self.batch_queries,
                "hidden": self.hidden, "temperature": self.temperature,
                "margin": self.margin, "logs": self.logs, "seed": self.seed,
                "pool_fingerprint": self.pool_fingerprint, "chosen_epochs": self.chosen_epochs,
                "chosen_penalty": self.chosen_penalty}

    def prepare(self, env) -> None:
        if self.net is not None:
            check_pool(env, self.pool_fingerprint)
            return
        self.pool_fingerprint = check_pool(env, None)
        self.net = self.family.new(first_env(env))  # selects exactly as kNN does (the ranker's ties go to kNN's set)

    # -- training --------------------------------------------------------------------------------

    def fit(self, env, budget: Budget | None = None, *, tensorboard: str | Path | None = None,
            progress: bool = True, **kwargs: Any) -> FitRecord:
        single = first_env(env)
        if single.observation != "embedding":
            raise ValueError("ListwiseAgent needs observation='embedding'")
        budget = budget or Budget(llm_calls=2000)
        limit = min(b for b in (budget.episodes, budget.llm_calls) if b is not None)
        self.prepare(single)
        rng = np.random.default_rng(self.seed)
        self._scorer = single.engine
        start_calls = self._scorer.stats.llm_calls

        data, explored = self._explore(single, limit, rng, progress)                 # 1.
        mean_gain, settings = self._cross_validate(single, data, rng, progress)     # 2.
        self._train_chosen(single, data, mean_gain, settings)                       # 3.

        writer = summary_writer(tensorboard)
        if writer is not None:
            for e, g in enumerate(mean_gain):
                writer.add_scalar("listwise/validation_gain", g, e)
            writer.close()
        return FitRecord(explored, self._scorer.stats.llm_calls - start_calls, [],
                         {"scored_sets": sum(len(v) for v in data.values()), "chosen_epochs": self.chosen_epochs,
                          "chosen_penalty": self.chosen_penalty,
                          "validation_gain": self.history[int(mean_gain.argmax())]["validation_gain"],
                          "epochs": self.history})

    # 1. Explore ------------------------------------------------------------------------------------

    def _explore(self, single: PillowMatchEnv, limit: int, rng: np.random.Generator, progress: bool
                 ) -> tuple[dict[int, ScoredSets], int]:
        """Score the kNN set and random other sets of every query's shortlist (``limit`` sets in all),
        plus matching episodes of ``logs``: per query, {set in prompt order: reward}; and how many sets
        were scored."""
        n_queries = len(single.queries)
        per_query = max(1, limit // n_queries)
        plan: list[tuple[int, tuple[int, ...]]] = []
        for q in rng.permutation(n_queries).tolist():
            knn, *others = self.candidate_sets(single, q)
            rng.shuffle(others)
            plan += [(q, knn)] + [(q, c) for c in others[:per_query - 1]]
        plan = plan[:limit]
        data: dict[int, ScoredSets] = {q: {} for q in range(n_queries)}
        for (q, sel), reward in zip(plan, self._score(single, plan, progress)):
            data[q][sel] = reward
        for path in self.logs:
            for t in read_trajectories(path, single.pool, single.queries, fingerprint=self._scorer.fingerprint):
                shortlist = set(self._shortlist(single, t.query_index).tolist())
                if (len(t.exemplars) == single.m and set(t.exemplars) <= shortlist
                        and tuple(t.exemplars) == self._prompt_order(single, t.query_index, t.exemplars)):
                    data[t.query_index].setdefault(tuple(t.exemplars), t.reward)
        return data, len(plan)

    def _score(self, single: PillowMatchEnv, plan: list[tuple[int, tuple[int, ...]]], progress: bool) -> list[float]:
        """Rewards of the planned (query, set) pairs by the env's reward, in batches."""
        rewards: list[float] = []
        for lo in tqdm(range(0, len(plan), 64), desc="listwise: score", unit="batch", disable=not progress):
            requests = [([single.pool[i] for i in sel], single.queries[q]) for q, sel in plan[lo:lo + 64]]
            rewards += [s.reward for s in self._scorer.score(requests)]
        return rewards

    # 2. Cross-validate -----------------------------------------------------------------------------

    def _cross_validate(self, single: PillowMatchEnv, data: dict[int, ScoredSets], rng: np.random.Generator,
                        progress: bool) -> tuple[np.ndarray, list]:
        """Out-of-fold paired gain over the kNN set per setting; row 0 is kNN itself (gain 0). Settings:
        the model family's (each epoch count 1..``epochs`` of the network, each of ``penalties``)."""
        knn_sets, usable = self._knn_and_usable(single, data)
        folds = np.array_split(rng.permutation(usable), min(self.folds, max(len(usable), 1)))
        settings = self.family.settings()
        gains = np.zeros((len(settings) + 1, len(usable)))
        column = {q: i for i, q in enumerate(usable)}
        for held_out in tqdm(folds, desc="listwise: cross-validate", unit="fold", disable=not progress):
            held = set(held_out.tolist())
            train = self._batch(single, {q: data[q] for q in usable if q not in held})
            valid = self._batch(single, {q: data[q] for q in held_out.tolist()}, keep_flat=True)
            cols = [column[q] for q in valid.query_indices]
            for row, net in enumerate(self.family.trained(single, train, settings, self._listwise_loss), start=1):
                gains[row, cols] = self._gain(net, valid, knn_sets)
        mean_gain = gains.mean(axis=1) if usable else np.zeros(len(settings) + 1)
        self.history = [{self.family.setting: value,
                         "validation_gain": paired_bootstrap(gains[row]) if usable else None}
                        for row, value in enumerate([self.family.untrained, *settings])]
        return mean_gain, settings

    def _knn_and_usable(self, single: PillowMatchEnv, data: dict[int, ScoredSets]
                        ) -> tuple[dict[int, tuple[int, ...]], list[int]]:
        """Each query's kNN set, and the queries with it and at least one other set scored (trainable)."""
        knn_sets = {q: self._prompt_order(single, q, self._shortlist(single, q)[:single.m]) for q in data}
        return knn_sets, [q for q in data if knn_sets[q] in data[q] and len(data[q]) >= 2]

    def _listwise_loss(self, scores: torch.Tensor, batch: SetBatch) -> torch.Tensor:
        """Cross-entropy from the target distribution (softmax of the rewards / ``target_temperature``)
        to the softmax of the scores, over each query's sets."""
        target = torch.softmax((batch.rewards / self.target_temperature).masked_fill(~batch.valid, float("-inf")), -1)
        predicted = torch.log_softmax(scores.masked_fill(~batch.valid, float("-inf")), -1)
        return -(target * predicted.masked_fill(~batch.valid, 0.0)).sum(-1).mean()

    @torch.no_grad()
    def _gain(self, net: SetScorer, valid: SetBatch, knn_sets: dict[int, tuple[int, ...]]) -> np.ndarray:
        """Per held-out query: reward of the scored set the model ranks first minus the kNN set's."""
        first = net.set_scores(valid).masked_fill(~valid.valid, float("-inf")).argmax(-1)
        rewards = valid.rewards[torch.arange(len(first)), first].numpy()
        knn = np.array([sets[knn_sets[q]] for q, sets in zip(valid.query_indices, valid.sets)])
        return rewards - knn

    # 3. Train with the chosen setting ----------------------------------------------------------------

    def _train_chosen(self, single: PillowMatchEnv, data: dict[int, ScoredSets], mean_gain: np.ndarray,
                      settings: list) -> None:
        """``self.net`` trained on all usable queries with the best setting (kNN's fresh model if none wins)."""
        best = int(mean_gain.argmax())
        self.net = self.family.new(single)  # selects as kNN does
        if best:
            _, usable = self._knn_and_usable(single, data)
            everything = self._batch(single, {q: data[q] for q in usable})
            self.net = list(self.family.trained(single, everything, settings[:best], self._listwise_loss))[-1]
        chosen = settings[best - 1] if best else self.family.untrained
        self.chosen_epochs = chosen if self.family.setting == "epochs" else None
        self.chosen_penalty = chosen if self.family.setting == "penalty" else None
        self.net.eval()

    # -- selection -------------------------------------------------------------------------------

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        return self.select_many(env, [query_index])[0]

    def select_many(self, env: PillowMatchEnv, query_indices: list[int]) -> list[list[int]]:
        """The best-ranked set of each query's shortlist (kNN's unless beaten by ``margin``), all
        queries scored in batches."""
        self.prepare(env)
        assert self.net is not None
        self.net.eval()
        unique = list(dict.fromkeys(query_indices))
        keys = embed_examples(env.encoder, env.pool, with_output=False)
        similarity = {q: keys @ env.query_embeddings[q] for q in unique}  # exactly as kNN computes it
        candidates = {q: self.candidate_sets(env, q, similarity[q]) for q in unique}
        best: dict[int, list[int]] = {}
        enumerable = [q for q, sets in candidates.items() if len(sets) <= MAX_ENUMERATED_SETS]
        for lo in range(0, len(enumerable), 256):
            chunk = enumerable[lo:lo + 256]
            batch = self._batch(env, {q: dict.fromkeys(candidates[q], 0.0) for q in chunk}, keep_flat=True)
            with torch.no_grad():
                scores = self.net.set_scores(batch).masked_fill(~batch.valid, float("-inf"))
            top = scores.max(-1).values
            for i, (q, col) in enumerate(zip(chunk, scores.argmax(-1).tolist())):
                if float(top[i] - scores[i, 0]) < self.margin:  # column 0 is kNN's set
                    col = 0
                best[q] = list(candidates[q][col])
        for q in candidates:
            if q not in best:
                best[q] = self._greedy(env, q)
        return [best[q] for q in query_indices]

    @torch.no_grad()
    def _greedy(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        """One member at a time, for shortlists with too many sets to rank them all: add the entry whose
        partial set scores highest (for the network: the most likely next pick)."""
        assert self.net is not None
        shortlist, chosen = self._shortlist(env, query_index).tolist(), []
        for _ in range(env.m):
            rest = [i for i in shortlist if i not in chosen]
            batch = self._batch(env, {query_index: {}}, keep_flat=True)  # the query's side only
            batch.picks = torch.as_tensor([[chosen + [i] for i in rest]])  # partial sets, in pick order
            chosen.append(rest[int(self.net.set_scores(batch)[0].argmax())])
        return list(self._prompt_order(env, query_index, chosen))

    def transfer(self, env) -> ListwiseAgent:
        """This trained agent, re-pointed at ``env``'s pool (an env or a vector env): a new agent whose
        network scores that pool's entries with the weights learned here (the matching network's MLPs
        take any embedding; only its stored pool changes). No LLM call: a learner trained on one suite
        selects for another. The linear ranker's per-entry biases belong to its own pool, so it does
        not transfer."""
        if self.net is None:
            raise ValueError("transfer: fit or load the agent first")
        env = first_env(env)
        moved = copy.deepcopy(self, {id(self._scorer): None})  # not the engine fit used (LLM, cache)
        moved.net = moved.family.transfer(moved.net, env)
        moved.pool_fingerprint = check_pool(env, None)
        return moved

    # -- shortlists and sets -------------------------------------------------------------------------

    def _shortlist(self, env: PillowMatchEnv, query_index: int, similarity: np.ndarray | None = None) -> np.ndarray:
        """The C nearest pool entries, nearest first (the env's shortlist order when it has one)."""
        if similarity is None:
            similarity = embed_examples(env.encoder, env.pool, with_output=False) @ env.query_embeddings[query_index]
        c = min(self.candidates, env.candidates or len(env.pool), len(env.pool))
        return np.argsort(-similarity, kind="stable")[:c]

    def _prompt_order(self, env: PillowMatchEnv, query_index: int, picks, similarity: np.ndarray | None = None
                      ) -> tuple[int, ...]:
        """A set in prompt order: nearest to the query last (so the prompt is a function of the set)."""
        if similarity is None:
            similarity = embed_examples(env.encoder, env.pool, with_output=False) @ env.query_embeddings[query_index]
        return tuple(sorted((int(i) for i in picks), key=lambda i: (similarity[i], -i)))

    def candidate_sets(self, env: PillowMatchEnv, query_index: int, similarity: np.ndarray | None = None
                       ) -> list[tuple[int, ...]]:
        """Every ``m``-set of the query's shortlist, in prompt order; the first is kNN's (the ``m`` nearest)."""
        if similarity is None:
            similarity = embed_examples(env.encoder, env.pool, with_output=False) @ env.query_embeddings[query_index]
        return [self._prompt_order(env, query_index, c, similarity)
                for c in itertools.combinations(self._shortlist(env, query_index, similarity), env.m)]

    def _batch(self, env: PillowMatchEnv, data: dict[int, ScoredSets], keep_flat: bool = False) -> SetBatch:
        """Padded tensors of the queries' scored sets. Training drops queries whose sets all scored the
        same (nothing to learn); ``keep_flat`` keeps them."""
        rows = [(q, sets) for q, sets in data.items()
                if keep_flat or (len(sets) >= 2 and np.ptp(list(sets.values())) > 1e-9)]
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
        indices = [q for q, _ in rows]
        views = example_views(env.encoder, env.queries, indices) if self.net.uses_query_views else None
        return SetBatch(picks, rewards, valid, allowed, queries, torch.as_tensor(env.pool_embeddings), indices,
                        [sets for _, sets in rows], views)

    # -- persistence -----------------------------------------------------------------------------

    def _save_weights(self, path: Path) -> None:
        if self.net is None:
            raise ValueError("listwise: nothing to save: fit the agent first")
        self.family.save(self.net, path, self.history)

    def _load_weights(self, path: Path, trusted: bool = False) -> None:
        self.net, self.history = self.family.load(path)
