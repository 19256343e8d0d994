"""Baselines that learn nothing: no exemplars, random, kNN (KATE-style), BM25, MMR and a greedy k-DPP.

Every baseline picks through the env's action mask (read, never stepped), so a shortlist (``candidates=C``) binds them too.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np

from pillow_env.env import PillowMatchEnv
from pillow_env.prompts import user_text
from pillow_env.resources import embed_examples

from .base import Agent, SelectionState, greedy_rollout

__all__ = ["ZeroShotAgent", "RandomAgent", "KNNAgent", "BM25Agent", "MMRAgent", "DPPAgent"]


class ZeroShotAgent(Agent):
    """No exemplars at all: the floor every selector must beat."""

    name = "zero_shot"

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        return []


class RandomAgent(Agent):
    """``m`` distinct valid pool entries uniformly at random (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        valid = np.flatnonzero(env.action_mask_for(query_index))
        return [int(i) for i in self._rng.choice(valid, env.m, replace=False)]


class KNNAgent(Agent):
    """The ``m`` pool entries whose instruction + input embed closest to the query's (KATE).

    The nearest is placed last, next to the query, as KATE found best.
    """

    name = "knn"

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        keys = embed_examples(env.encoder, env.pool, with_output=False)
        picks = greedy_rollout(env, query_index, lambda state: keys @ env.query_embeddings[query_index])
        return picks[::-1]


class MMRAgent(Agent):
    """Maximal marginal relevance: each pick maximises ``lam * sim(query, e) - (1 - lam) * max sim(e, picked)``.

    Relevance against redundancy on the same embeddings kNN uses; the first (most relevant) pick is
    placed last, next to the query. ``lam=1`` is kNN.
    """

    name = "mmr"

    def __init__(self, lam: float = 0.5) -> None:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"MMRAgent: lam must be in [0, 1], got {lam}")
        self.lam = lam

    def config(self) -> dict[str, Any]:
        return {"lam": self.lam}

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        keys = embed_examples(env.encoder, env.pool, with_output=False)
        relevance = keys @ env.query_embeddings[query_index]

        def scores(state: SelectionState) -> np.ndarray:
            redundancy = (keys @ keys[state.chosen].T).max(axis=1) if state.chosen else 0.0
            return self.lam * relevance - (1.0 - self.lam) * redundancy

        return greedy_rollout(env, query_index, scores)[::-1]


class DPPAgent(Agent):
    """Greedy MAP of a k-DPP (as OpenICL's DPP retriever): relevant *and* diverse exemplars.

    Kernel ``L = diag(q) S diag(q)`` with ``S`` the cosine similarity of pool entries and quality
    ``q = exp(sim(query, e) / (2 * scale))``; each pick maximises ``log det L`` of the picked set. The
    first pick (the most relevant) is placed last, next to the query.
    """

    name = "dpp"

    def __init__(self, scale: float = 0.1) -> None:
        if not scale > 0:
            raise ValueError(f"DPPAgent: scale must be > 0, got {scale}")
        self.scale = scale

    def config(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        keys = embed_examples(env.encoder, env.pool, with_output=False).astype(np.float64)
        log_quality = (keys @ env.query_embeddings[query_index]) / (2 * self.scale)

        def scores(state: SelectionState) -> np.ndarray:
            # log det L_{S+e} - log det L_S = 2 log q_e + log(1 - s_e^T S_S^-1 s_e): the Schur complement.
            if not state.chosen:
                return 2 * log_quality
            picked = keys[state.chosen]
            gram = picked @ picked.T + 1e-9 * np.eye(len(state.chosen))
            cross = keys @ picked.T
            residual = 1.0 - np.einsum("ij,ij->i", cross @ np.linalg.inv(gram), cross)
            return 2 * log_quality + np.log(np.clip(residual, 1e-12, None))

        return greedy_rollout(env, query_index, scores)[::-1]


_TOKEN = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BM25Agent(Agent):
    """The ``m`` pool entries ranked highest by Okapi BM25 against the query text (lexical retrieval)."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._index: tuple[int, list[Counter[str]], dict[str, float], float] | None = None

    def config(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b}

    def _build(self, env: PillowMatchEnv) -> tuple[list[Counter[str]], dict[str, float], float]:
        if self._index is None or self._index[0] != id(env.pool):
            docs = [Counter(_tokens(user_text(e))) for e in env.pool]
            df = Counter(term for doc in docs for term in doc)
            n = len(docs)
            idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
            avg = sum(sum(d.values()) for d in docs) / n
            self._index = (id(env.pool), docs, idf, avg)
        return self._index[1:]

    def scores(self, env: PillowMatchEnv, query_index: int) -> np.ndarray:
        docs, idf, avg = self._build(env)
        terms = _tokens(user_text(env.queries[query_index]))
        out = np.zeros(len(docs))
        for i, doc in enumerate(docs):
            length = sum(doc.values())
            for t in terms:
                f = doc.get(t, 0)
                if f:
                    out[i] += idf[t] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * length / avg))
        return out

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        scores = self.scores(env, query_index)
        return greedy_rollout(env, query_index, lambda state: scores)[::-1]
