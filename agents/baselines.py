"""Baselines that learn nothing: no exemplars, random exemplars, kNN (KATE-style), BM25."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np

from pillow_env.env import PillowMatchEnv
from pillow_env.prompts import user_text
from pillow_env.resources import embed_examples

from .base import Agent, greedy_rollout

__all__ = ["ZeroShotAgent", "RandomAgent", "KNNAgent", "BM25Agent"]


class ZeroShotAgent(Agent):
    """No exemplars at all: the floor every selector must beat."""

    name = "zero_shot"

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        return []


class RandomAgent(Agent):
    """``m`` distinct pool entries uniformly at random (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        return [int(i) for i in self._rng.choice(len(env.pool), env.m, replace=False)]


class KNNAgent(Agent):
    """The ``m`` pool entries whose instruction + input embed closest to the query's (KATE).

    The nearest is placed last, next to the query, as KATE found best.
    """

    name = "knn"

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        keys = embed_examples(env.encoder, env.pool, with_output=False)
        picks = greedy_rollout(env, query_index, lambda obs: keys @ env.query_embeddings[query_index])
        return picks[::-1]


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
        return greedy_rollout(env, query_index, lambda obs: scores)[::-1]
