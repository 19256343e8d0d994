"""Off-policy listwise training of a set scorer on every scored exemplar set. Read top to bottom.

REINFORCE learns from one sampled set per LLM call and forgets it. Here every scored set of a query
is kept and the whole list teaches the model at once, as EPR / LLM-R train retrievers from scored
candidates: the LLM is only asked to score, never to be sampled from, and the data is reused as far
as validation allows. The model is PILLOW's matching network, initialised to kNN (the default), or a
linear ranker over a few similarity features with a bias per pool entry (``model="linear"``,
:mod:`agents.set_ranker`).

``fit``:

1. Explore: for every training query, score (by default with the likelihood signal: the reference's
   mean token log-likelihood after the prompt, one forward pass, no decoding) its kNN set and other
   ``m``-sets of its ``candidates`` nearest pool entries (each set placed nearest-last in the prompt,
   as kNN does), drawn at random (or by a balanced design, ``balanced``), as many as the budget
   allows (all of it goes to exploration), plus matching episodes from earlier trajectory logs
   (``logs``).
2. Train with a listwise loss: per query, the softmax of its sets' rewards / ``target_temperature``
   is the target distribution over those sets, and the softmax of the model's set scores over the
   same sets the prediction (the ranker's scores are logits; the network's are its sequence
   log-probabilities of picking the set).
3. Choose the setting by cross-validation over queries: in each of ``folds`` folds, train on the
   other queries under each setting (each L2 penalty of the ranker; each epoch count of the
   network) and take for each held-out query the scored set the model ranks first; its reward minus
   the kNN set's is the paired validation gain (no extra LLM call). The setting with the largest
   mean out-of-fold gain wins and the model is trained on all queries with it. Plain kNN is a
   candidate, so learning that does not help leaves kNN in place.

Selection ranks every ``m``-set of the shortlist by the model's score (greedy, one member at a time,
when there are too many sets) and places the set nearest-last.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pillow_env.backends import BackendError
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples, embed_field
from pillow_env.stats import paired_bootstrap
from pillow_env.trajectories import read_trajectories

from .base import Agent, Budget, check_pool, greedy_rollout, summary_writer, unwrap
from .matching import MatchingNetwork, load_network, save_network
from .set_ranker import SetRanker, example_views, load_ranker, save_ranker

__all__ = ["ListwiseAgent"]

MAX_ENUMERATED_SETS = 4096
MODELS = ("linear", "matching")
DEFAULT_MARGIN = {"linear": 0.0, "matching": 0.5}  # each chosen on held-out training queries (README)


class ListwiseAgent(Agent):
    """A set scorer trained off-policy on all scored sets of a shortlist (listwise loss).

    Args:
        candidates: shortlist size C: sets are drawn from, and selections restricted to, the C pool
            entries nearest the query (further capped by the env's own ``candidates``).
        model: ``"matching"`` (default): PILLOW's :class:`~agents.matching.MatchingNetwork`;
            ``"linear"``: :class:`~agents.set_ranker.SetRanker`, 5 similarity weights and a bias per
            pool entry. On held-out training queries (benchmarks/bench_listwise_validation.py) the
            ranker's picks are far better by likelihood (+0.071 vs +0.043 over kNN training on half A,
            +0.080 vs +0.047 on half B; 8 seeds) but no better by generation, what the test split
            measures (+0.018 vs +0.024, 8 seeds), so the default stays the network (README).
        penalties: the L2 penalties cross-validation chooses among for the linear ranker.
        epochs: the most epochs cross-validation may choose for the matching network.
        folds: cross-validation folds over the training queries.
        target_temperature: temperature of the softmax turning a query's set rewards into targets.
        lr, weight_decay, batch_queries: the matching network's AdamW settings and queries per step.
        hidden, temperature: see :class:`~agents.matching.MatchingNetwork` (always ``knn_init``).
        signal: ``"loglik"`` (default) scores explored sets by the reference's likelihood through the
            env's LLM, whatever the env's own reward (its cost is 0.42 of a generation here, and the
            set it ranks best is far better than kNN's: see the README's headroom figures); a backend
            that cannot score falls back to the env's reward with a warning. ``"env"`` uses the env's reward.
        balanced: explore by a balanced design: each next set of a query is one whose members have
            been scored least often for it, so every shortlist entry is seen about equally often
            (random sets leave some unseen). Off by default: on held-out training queries it gained
            +0.047 over kNN against +0.043 for random sets (8 seeds, better in 6), but on the two test
            splits of the built-in suite it did worse (README), so no reliable difference.
        explore_temperature: the order in which sets are drawn (and, when ``balanced``, how ties are
            broken): ``None`` uniform; a number in proportion to ``exp(sum of query cosines /
            explore_temperature)``, so sets near kNN's come first.
        refine: the share of the budget kept for a second round: after training on the first, score for
            each query the sets the model ranks highest among those not scored yet (its own
            candidates, so its over-ratings get corrected), then train again. 0: one round.
        margin: selection keeps kNN's set unless the model's best set beats it by at least this much
            in score (0: always the best-ranked set); a guard against departures from kNN that the
            model is unsure of. Applies where all sets are ranked. Default per model, each chosen on
            training queries only (half B of bench_listwise_validation.py): 0 for the ranker (judged
            by likelihood: its scores are small, 0.5 kept kNN's set on most queries, +0.027 vs
            +0.071 at 0, 8 seeds), 0.5 for the network (+0.042 vs +0.035 at 0 by likelihood, better
            in each of 4 seeds; by generation +0.025 vs +0.020 at 0, +0.017 at 1).
        logs: trajectory logs (JSONL) whose episodes on the training queries are added to the data.
        seed: seeds the exploration, the folds and the network init.
        chosen_epochs, chosen_penalty: what cross-validation chose (set by ``fit``, kept in the config).

    The :class:`~agents.base.Budget` counts scored sets (LLM calls; cached ones included).
    """

    name = "listwise"
    learns = True

    def __init__(self, candidates: int = 8, epochs: int = 40, folds: int = 5, target_temperature: float = 0.05,
                 lr: float = 1e-3, weight_decay: float = 1e-2, batch_queries: int = 16, hidden: int = 256,
                 temperature: float = 0.1, signal: str = "loglik", balanced: bool = False,
                 explore_temperature: float | None = None, refine: float = 0.0, margin: float | None = None,
                 logs: tuple[str, ...] | list[str] = (), seed: int = 0, model: str = "matching",
                 penalties: tuple[float, ...] | list[float] = (0.01, 0.03, 0.1, 0.3),
                 pool_fingerprint: str | None = None, chosen_epochs: int | None = None,
                 chosen_penalty: float | None = None) -> None:
        if candidates < 1:
            raise ValueError(f"ListwiseAgent: candidates must be >= 1, got {candidates}")
        if epochs < 1 or folds < 2:
            raise ValueError(f"ListwiseAgent: epochs must be >= 1 and folds >= 2, got {epochs} and {folds}")
        if not target_temperature > 0:
            raise ValueError(f"ListwiseAgent: target_temperature must be > 0, got {target_temperature}")
        if not penalties or min(penalties) <= 0:
            raise ValueError(f"ListwiseAgent: penalties must be a non-empty list of numbers > 0, got {penalties}")
        if signal not in ("loglik", "env"):
            raise ValueError(f"ListwiseAgent: signal must be 'loglik' or 'env', got {signal!r}")
        self.signal = signal
        self.candidates, self.epochs, self.folds = candidates, epochs, folds
        self.target_temperature, self.lr, self.weight_decay = target_temperature, lr, weight_decay
        self.batch_queries, self.hidden, self.temperature = batch_queries, hidden, temperature
        if not 0.0 <= refine < 1.0:
            raise ValueError(f"ListwiseAgent: refine must be in [0, 1), got {refine}")
        if model not in MODELS:
            raise ValueError(f"ListwiseAgent: model must be one of {MODELS}, got {model!r}")
        margin = DEFAULT_MARGIN[model] if margin is None else margin
        if not margin >= 0:
            raise ValueError(f"ListwiseAgent: margin must be >= 0, got {margin}")
        self.balanced, self.explore_temperature = balanced, explore_temperature
        self.refine, self.margin = refine, margin
        self._scorer: RewardEngine | None = None
        self.logs, self.seed = [str(p) for p in logs], seed
        self.model, self.penalties = model, [float(p) for p in penalties]
        self.pool_fingerprint, self.chosen_epochs, self.chosen_penalty = pool_fingerprint, chosen_epochs, chosen_penalty
        self.net: SetRanker | MatchingNetwork | None = None
        self.history: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "epochs": self.epochs, "folds": self.folds,
                "target_temperature": self.target_temperature, "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_queries": self.batch_queries, "hidden": self.hidden, "temperature": self.temperature,
                "signal": self.signal, "balanced": self.balanced,
                "explore_temperature": self.explore_temperature,
                "refine": self.refine, "margin": self.margin, "logs": self.logs, "seed": self.seed,
                "model": self.model, "penalties": self.penalties, "pool_fingerprint": self.pool_fingerprint,
                "chosen_epochs": self.chosen_epochs, "chosen_penalty": self.chosen_penalty}

    # -- shared with selection -------------------------------------------------------------------

    def _new_network(self, env: PillowMatchEnv) -> SetRanker | MatchingNetwork:
        """A fresh model: it selects exactly as kNN does (the ranker's ties go to the kNN set)."""
        if self.model == "linear":
            outputs = torch.as_tensor(embed_field(env.encoder, env.pool, "output"))
            return SetRanker(example_views(env.encoder, env.pool), outputs, env.m)
        torch.manual_seed(self.seed)
        keys = torch.as_tensor(embed_examples(env.encoder, env.pool, with_output=False))
        return MatchingNetwork(keys, env.m, self.hidden, self.temperature, knn_init=True)

    def prepare(self, env) -> None:
        if self.net is not None:
            check_pool(env, self.pool_fingerprint)
            return
        self.pool_fingerprint = check_pool(env, None)
        self.net = self._new_network(env.envs[0] if hasattr(env, "envs") else env)

    def transfer(self, env: PillowMatchEnv) -> ListwiseAgent:
        """This trained agent, re-pointed at ``env``'s pool: a new agent whose network scores that pool's
        entries with the weights learned here (the matching network's MLPs take any embedding; only
        its stored pool changes). No LLM call: a learner trained on one suite selects for another.
        The linear ranker's per-entry biases belong to its own pool, so it does not transfer."""
        import copy

        if self.net is None:
            raise ValueError("transfer: fit or load the agent first")
        if self.model != "matching":
            raise ValueError(f"transfer: model={self.model!r} learns a bias per pool entry, which does not carry "
                             "over to another pool; use model='matching'")
        moved = copy.deepcopy(self, {id(self._scorer): None})  # not the engine fit used (LLM, cache)
        keys = torch.as_tensor(embed_examples(env.encoder, env.pool, with_output=False)).float()
        if keys.shape[1] != moved.net.prompts.shape[1]:
            raise ValueError(f"transfer: the env's encoder gives {keys.shape[1]}-dim embeddings, the agent was "
                             f"trained on {moved.net.prompts.shape[1]}")
        if env.m != moved.net.m:
            raise ValueError(f"transfer: the agent picks m={moved.net.m} exemplars, the env m={env.m}")
        moved.net.prompts = keys
        moved.pool_fingerprint = check_pool(env, None)
        return moved

    def _similarity(self, env: PillowMatchEnv, query_index: int) -> np.ndarray:
        return embed_examples(env.encoder, env.pool, with_output=False) @ env.query_embeddings[query_index]

    def _shortlist(self, env: PillowMatchEnv, query_index: int, similarity: np.ndarray | None = None) -> np.ndarray:
        """The C nearest pool entries, nearest first (the env's shortlist order when it has one)."""
        similarity = self._similarity(env, query_index) if similarity is None else similarity
        c = min(self.candidates, env.candidates or len(env.pool), len(env.pool))
        return np.argsort(-similarity, kind="stable")[:c]

    def _prompt_order(self, env: PillowMatchEnv, query_index: int, picks, similarity: np.ndarray | None = None
                      ) -> list[int]:
        """A set in prompt order: nearest to the query last (so the prompt is a function of the set)."""
        similarity = self._similarity(env, query_index) if similarity is None else similarity
        return sorted((int(i) for i in picks), key=lambda i: (similarity[i], -i))

    def _sets(self, env: PillowMatchEnv, query_index: int, similarity: np.ndarray | None = None
              ) -> list[tuple[int, ...]]:
        """Every ``m``-set of the query's shortlist, in prompt order; the first is kNN's (the ``m`` nearest)."""
        similarity = self._similarity(env, query_index) if similarity is None else similarity
        return [tuple(self._prompt_order(env, query_index, c, similarity))
                for c in itertools.combinations(self._shortlist(env, query_index, similarity), env.m)]

    def _knn_and_usable(self, single: PillowMatchEnv, data: dict[int, dict[tuple[int, ...], float]]
                        ) -> tuple[dict[int, tuple[int, ...]], list[int]]:
        """Each query's kNN set, and the queries with it and at least one other set scored (trainable)."""
        knn_sets = {q: tuple(self._prompt_order(single, q, self._shortlist(single, q)[:single.m])) for q in data}
        return knn_sets, [q for q in data if knn_sets[q] in data[q] and len(data[q]) >= 2]

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        return self.select_many(env, [query_index])[0]

    def select_many(self, env: PillowMatchEnv, query_indices: list[int]) -> list[list[int]]:
        """The best-ranked set of each query's shortlist, all queries scored in batches."""
        self.prepare(env)
        assert self.net is not None
        self.net.eval()
        unique = list(dict.fromkeys(query_indices))
        keys = embed_examples(env.encoder, env.pool, with_output=False)
        similarity = {q: keys @ env.query_embeddings[q] for q in unique}  # exactly as kNN computes it
        candidates = {q: self._sets(env, q, similarity[q]) for q in unique}
        best: dict[int, list[int]] = {}
        enumerable = [q for q, sets in candidates.items() if len(sets) <= MAX_ENUMERATED_SETS]
        table = torch.as_tensor(env.pool_embeddings)
        for lo in range(0, len(enumerable), 256):
            chunk = enumerable[lo:lo + 256]
            batch = self._tensors(env, {q: dict.fromkeys(candidates[q], 0.0) for q in chunk}, keep_flat=True)
            with torch.no_grad():
                scores = self._set_scores(batch, table).masked_fill(~batch["valid"], float("-inf"))
            top = scores.max(-1).values
            for i, (q, row) in enumerate(zip(chunk, scores.argmax(-1).tolist())):
                # candidates[q][0] is kNN's set (the two nearest); keep it unless beaten by the margin
                if float(top[i] - scores[i, 0]) < self.margin:
                    row = 0
                best[q] = list(candidates[q][row])
        for q in candidates:
            if q not in best:
                best[q] = self._greedy(env, q)
        return [best[q] for q in query_indices]

    def _greedy(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        """Step-by-step decoding, for shortlists with too many sets to rank them all."""
        assert self.net is not None
        shortlist = self._shortlist(env, query_index)
        if isinstance(self.net, SetRanker):  # add the member that scores the partial set highest, m times
            views, chosen = example_views(env.encoder, env.queries, [query_index]), []
            with torch.no_grad():
                for _ in range(env.m):
                    rest = [int(i) for i in shortlist if int(i) not in chosen]
                    scores = self.net(views, torch.as_tensor([[chosen + [i] for i in rest]]))[0]
                    chosen.append(rest[int(scores.argmax())])
            return self._prompt_order(env, query_index, chosen)
        allowed = np.zeros(len(env.pool), dtype=bool)
        allowed[shortlist] = True

        @torch.no_grad()
        def step_scores(obs: dict[str, Any]) -> np.ndarray:
            query = torch.as_tensor(np.asarray(obs["query"]))[None]
            chosen = torch.as_tensor(np.asarray(obs["chosen"]))[None]
            out = self.net(query, chosen, torch.as_tensor([int(obs["step"])]))[0].numpy().astype(np.float64)
            return np.where(allowed, out, -np.inf)

        return self._prompt_order(env, query_index, greedy_rollout(env, query_index, step_scores))

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
        rng = np.random.default_rng(self.seed)
        self._scorer = self._scoring_engine(single.engine)

        # 1. Explore: the kNN set and random other sets of every query's shortlist, within the budget.
        second = int(round(limit * self.refine))
        data, explored = self._explore(single, limit - second, rng, progress)
        # 2 + 3. Train with cross-validated epochs (below); with ``refine``, then score each query's
        # best-ranked sets not scored yet (the network's own mistakes, corrected) and train again.
        mean_gain = self._cross_validate_and_train(single, data, rng, progress)
        if second:
            plan = self._refine_plan(single, data, second, rng)
            for (q, sel), reward in zip(plan, self._score(single, plan, progress)):
                data[q][tuple(sel)] = reward
            explored += len(plan)
            mean_gain = self._cross_validate_and_train(single, data, rng, progress)
        writer = summary_writer(tensorboard)
        if writer is not None:
            for e, g in enumerate(mean_gain):
                writer.add_scalar("listwise/validation_gain", g, e)
            writer.close()
        scored = sum(len(v) for v in data.values())
        return {"episodes": explored, "generations": explored, "scored_sets": scored,
                "chosen_epochs": self.chosen_epochs, "chosen_penalty": self.chosen_penalty,
                "validation_gain": self.history[int(mean_gain.argmax())]["validation_gain"], "history": [],
                "epochs": self.history}

    def _cross_validate_and_train(self, single: PillowMatchEnv, data: dict[int, dict[tuple[int, ...], float]],
                                  rng: np.random.Generator, progress: bool) -> np.ndarray:
        """Choose the setting by out-of-fold paired gain over the kNN set, then train ``self.net`` on all
        queries with it; returns the mean gain per setting. Settings: kNN itself (gain 0 by construction),
        then each of ``penalties`` (linear ranker) or each epoch count 1..``epochs`` (matching network)."""
        knn_sets, usable = self._knn_and_usable(single, data)
        table = torch.as_tensor(single.pool_embeddings)
        folds = np.array_split(rng.permutation(usable), min(self.folds, max(len(usable), 1)))
        linear = self.model == "linear"
        settings = self.penalties if linear else list(range(1, self.epochs + 1))
        gains = np.zeros((len(settings) + 1, len(usable)))  # row 0 = kNN: gain 0 by construction
        column = {q: i for i, q in enumerate(usable)}
        for held_out in tqdm(folds, desc="listwise: cross-validate", unit="fold", disable=not progress):
            held = set(held_out.tolist())
            train = self._tensors(single, {q: data[q] for q in usable if q not in held})
            valid = self._tensors(single, {q: data[q] for q in held_out.tolist()}, keep_flat=True)
            cols = [column[q] for q in valid["queries_index"]]
            for row, net in enumerate(self._trained(single, train, settings, table), start=1):
                gains[row, cols] = self._gain(net, valid, table, knn_sets)
        mean_gain = gains.mean(axis=1) if usable else np.zeros(len(settings) + 1)
        best = int(mean_gain.argmax())
        name = "penalty" if linear else "epochs"
        self.history = [{name: value, "validation_gain": paired_bootstrap(gains[row]) if usable else None}
                        for row, value in enumerate([None if linear else 0, *settings])]
        self.net = self._new_network(single)  # selects as kNN does
        if best:
            everything = self._tensors(single, {q: data[q] for q in usable})
            self.net = list(self._trained(single, everything, settings[best - 1:best] if linear
                                          else settings[:best], table))[-1]
        self.chosen_penalty = settings[best - 1] if linear and best else None
        self.chosen_epochs = None if linear else best
        self.net.eval()
        return mean_gain

    def _trained(self, single: PillowMatchEnv, batches: dict[str, Any], settings: list,
                 table: torch.Tensor) -> Iterator[SetRanker | MatchingNetwork]:
        """The model trained on ``batches`` under each setting, in turn: a fresh linear ranker per penalty
        (a convex problem, solved by L-BFGS), or one matching network after each further epoch."""
        if self.model == "linear":
            for penalty in settings:
                ranker = self._new_network(single)
                self._fit_ranker(ranker, batches, penalty)
                yield ranker
            return
        net = self._new_network(single)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in settings:
            self._epoch(net, optimizer, batches, table)
            yield net

    def _fit_ranker(self, ranker: SetRanker, batches: dict[str, Any], penalty: float) -> None:
        """Minimise the listwise loss over all queries plus ``penalty`` x the ranker's squared norm."""
        target = self._target(batches)
        optimizer = torch.optim.LBFGS(ranker.parameters(), max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self._listwise_loss(self._set_scores(batches, None, ranker), target, batches["valid"])
            loss = loss + penalty * ranker.penalty()
            loss.backward()
            return loss

        ranker.train()
        optimizer.step(closure)
        ranker.eval()

    def _refine_plan(self, single: PillowMatchEnv, data: dict[int, dict[tuple[int, ...], float]], limit: int,
                     rng: np.random.Generator) -> list[tuple[int, list[int]]]:
        """Per query, the sets the current network ranks highest among those not scored yet (``limit`` in all)."""
        assert self.net is not None
        queries = rng.permutation(len(single.queries)).tolist()
        per_query = max(1, limit // len(queries))
        table = torch.as_tensor(single.pool_embeddings)
        plan: list[tuple[int, list[int]]] = []
        for lo in range(0, len(queries), 64):
            chunk = queries[lo:lo + 64]
            candidates = {}
            for q in chunk:
                # nearest sets first, so score ties (an untrained linear ranker's) go to them
                candidates[q] = [c for c in self._sets(single, q) if c not in data[q]]
            chunk = [q for q in chunk if candidates[q]]
            if not chunk:
                continue
            batch = self._tensors(single, {q: dict.fromkeys(candidates[q], 0.0) for q in chunk}, keep_flat=True)
            with torch.no_grad():
                scores = self._set_scores(batch, table).masked_fill(~batch["valid"], float("-inf"))
            for row, q in enumerate(chunk):
                order = torch.argsort(scores[row], descending=True, stable=True).tolist()
                plan += [(q, list(candidates[q][i])) for i in order[:min(per_query, len(candidates[q]))]]
        return plan[:limit]

    def _explore(self, single: PillowMatchEnv, limit: int, rng: np.random.Generator, progress: bool = True
                 ) -> tuple[dict[int, dict[tuple[int, ...], float]], int]:
        """Score the kNN set and other sets of every query's shortlist (``limit`` sets in all), plus
        matching episodes of ``logs``: per query, {set in prompt order: reward}; and how many sets were scored."""
        m, n_queries = single.m, len(single.queries)
        per_query = max(1, limit // n_queries)
        plan: list[tuple[int, list[int]]] = []
        for q in rng.permutation(n_queries).tolist():
            similarity = self._similarity(single, q)  # once per query, not once per set
            knn, *others = [list(c) for c in self._sets(single, q, similarity)]
            if self.explore_temperature is None:
                rng.shuffle(others)
            else:  # Gumbel top-k: sets drawn without replacement, the nearer ones more often
                keys = np.array([similarity[c].sum() for c in others]) / self.explore_temperature
                others = [others[i] for i in np.argsort(-(keys + rng.gumbel(size=len(others))), kind="stable")]
            others = self._spread(knn, others, per_query - 1) if self.balanced else others[:per_query - 1]
            plan += [(q, knn)] + [(q, c) for c in others]
        plan = plan[:limit]
        data: dict[int, dict[tuple[int, ...], float]] = {q: {} for q in range(n_queries)}
        for (q, sel), reward in zip(plan, self._score(single, plan, progress)):
            data[q][tuple(sel)] = reward
        for path in self.logs:
            for t in read_trajectories(path, single.pool, single.queries, fingerprint=self._scorer.fingerprint):
                shortlist = set(self._shortlist(single, t.query_index).tolist())
                if (len(t.exemplars) == m and set(t.exemplars) <= shortlist
                        and list(t.exemplars) == self._prompt_order(single, t.query_index, t.exemplars)):
                    data[t.query_index].setdefault(tuple(t.exemplars), t.reward)
        return data, len(plan)

    @staticmethod
    def _spread(first: list[int], others: list[list[int]], n: int) -> list[list[int]]:
        """``n`` of ``others`` in a balanced design: each next set is the one whose members were scored
        least often so far (``first`` included; ties go to the set earlier in ``others``). That greedy
        walk can corner itself (the last entries left to cover already share a set), so it is run from
        each rotation of ``others`` until the counts differ by at most one, keeping the most even."""
        best: tuple[int, list[list[int]]] | None = None
        for start in range(max(len(others), 1)):
            rest, picked = others[start:] + others[:start], []
            counts = Counter(dict.fromkeys((x for s in others for x in s), 0))  # every entry, seen or not
            counts.update(first)
            while rest and len(picked) < n:
                picked.append(rest.pop(min(range(len(rest)), key=lambda i: sum(counts[x] for x in rest[i]))))
                counts.update(picked[-1])
            spread = max(counts.values()) - min(counts.values())
            if best is None or spread < best[0]:
                best = (spread, picked)
            if spread <= 1:
                break
        return best[1]

    def _score(self, single: PillowMatchEnv, plan: list[tuple[int, list[int]]], progress: bool) -> list[float]:
        """Rewards of the planned (query, set) pairs, by the training signal (see ``signal``), in batches."""
        rewards: list[float] = []
        for lo in tqdm(range(0, len(plan), 64), desc="listwise: score", unit="batch", disable=not progress):
            requests = [([single.pool[i] for i in sel], single.queries[q]) for q, sel in plan[lo:lo + 64]]
            try:
                scored = self._scorer.score(requests)
            except (BackendError, ValueError) as err:
                if rewards or "cannot score likelihoods" not in str(err) or self._scorer is single.engine:
                    raise
                warnings.warn(f"listwise: {err}; training on the env's reward instead", stacklevel=2)
                self._scorer = single.engine
                scored = self._scorer.score(requests)
            rewards += [s.reward for s in scored]
        return rewards

    def _scoring_engine(self, engine: RewardEngine) -> RewardEngine:
        if self.signal == "env":
            return engine
        try:
            return engine.with_signal("loglik")
        except ValueError as err:  # a backend without loglik at all
            warnings.warn(f"listwise: {err}; training on the env's reward instead", stacklevel=3)
            return engine

    def _target(self, batch: dict[str, Any]) -> torch.Tensor:
        """Per query, the softmax of its sets' rewards / ``target_temperature``: the distribution to learn."""
        return torch.softmax((batch["rewards"] / self.target_temperature).masked_fill(~batch["valid"],
                                                                                     float("-inf")), -1)

    @staticmethod
    def _listwise_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Cross-entropy from the target distribution to the softmax of the scores over each query's sets."""
        predicted = torch.log_softmax(scores.masked_fill(~valid, float("-inf")), -1)
        return -(target * predicted.masked_fill(~valid, 0.0)).sum(-1).mean()

    def _epoch(self, net: MatchingNetwork, optimizer: torch.optim.Optimizer, batches: dict[str, Any],
               table: torch.Tensor) -> None:
        net.train()
        for idx in torch.randperm(len(batches["rewards"])).split(self.batch_queries):
            batch = {k: v[idx] for k, v in batches.items() if isinstance(v, torch.Tensor)}
            loss = self._listwise_loss(self._set_scores(batch, table, net), self._target(batch), batch["valid"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()

    @torch.no_grad()
    def _gain(self, net: SetRanker | MatchingNetwork, valid: dict[str, Any], table: torch.Tensor,
              knn_sets: dict[int, tuple[int, ...]]) -> np.ndarray:
        """Per held-out query: reward of the scored set the network ranks first minus the kNN set's."""
        scores = self._set_scores(valid, table, net).masked_fill(~valid["valid"], float("-inf"))
        first = scores.argmax(-1)
        rewards = valid["rewards"][torch.arange(len(first)), first].numpy()
        knn = np.array([valid["sets"][row][knn_sets[q]] for row, q in enumerate(valid["queries_index"])])
        return rewards - knn

    def _tensors(self, env: PillowMatchEnv, data: dict[int, dict[tuple[int, ...], float]],
                 keep_flat: bool = False) -> dict[str, Any]:
        """Padded per-query tensors: sets in pick order (nearest first), rewards, valid-set and shortlist masks.

        Training drops queries whose sets all scored the same (nothing to learn); ``keep_flat`` keeps them.
        """
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
        batch = {"picks": picks, "rewards": rewards, "valid": valid, "allowed": allowed, "queries": queries,
                 "queries_index": [q for q, _ in rows], "sets": [sets for _, sets in rows]}
        if self.model == "linear":  # the ranker's side of the queries
            batch["views"] = example_views(env.encoder, env.queries, [q for q, _ in rows])
        return batch

    def _set_scores(self, batch: dict[str, Any], table: torch.Tensor | None,
                    net: SetRanker | MatchingNetwork | None = None) -> torch.Tensor:
        """(queries, sets) scores: the linear ranker's, or the matching network's log-probability of picking
        each set in order within the shortlist (``table``: the pool embeddings the observation shows)."""
        net = net or self.net
        assert net is not None
        if isinstance(net, SetRanker):
            return net(batch["views"], batch["picks"])
        picks = batch["picks"]
        n, width, m = picks.shape
        flat = picks.reshape(n * width, m)
        query = batch["queries"].repeat_interleave(width, 0)
        mask = batch["allowed"].repeat_interleave(width, 0).clone()
        chosen = torch.zeros((n * width, m, table.shape[1]))
        sequence = torch.zeros(n * width)
        for t in range(m):
            logits = net(query, chosen, torch.full((n * width,), t), mask)
            sequence = sequence + torch.log_softmax(logits, -1).gather(1, flat[:, t:t + 1]).squeeze(1)
            chosen = chosen.clone()
            chosen[:, t] = table[flat[:, t]]
            mask[torch.arange(n * width), flat[:, t]] = False
        return sequence.reshape(n, width)

    # -- persistence -----------------------------------------------------------------------------

    def _save_weights(self, path: Path) -> None:
        (save_ranker if self.model == "linear" else save_network)(self.net, path, self.history)

    def _load_weights(self, path: Path, trusted: bool = False) -> None:
        if self.model == "linear":
            self.net, self.history = load_ranker(path)
        else:
            self.net, self.history = load_network(path, self.hidden, self.temperature, knn_init=True)
