"""Score an agent's selections on held-out queries through the env's engine (and its cache)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv

from .base import Agent, unwrap

__all__ = ["Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """Per-query records (query, chosen pool indices, generation, reward components), means, and the
    LLM calls the scoring made (cache hits excluded)."""

    agent: str
    per_query: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: int = 0

    @property
    def means(self) -> dict[str, float]:
        keys = [k for k, v in self.per_query[0].items() if isinstance(v, float)] if self.per_query else []
        return {k: float(np.mean([r[k] for r in self.per_query])) for k in keys}


def evaluate(agent: Agent, env: PillowMatchEnv, query_indices: list[int] | None = None, *,
             batch_size: int = 64, progress: bool = True, engine: RewardEngine | None = None) -> Evaluation:
    """Select for every query (free), then score all selections as batched calls of ``engine``
    (default: the env's own)."""
    env = unwrap(env)
    if not isinstance(env, PillowMatchEnv):
        raise TypeError("evaluate needs a single PillowMatchEnv (the test queries); got a vector env")
    indices = list(range(len(env.queries))) if query_indices is None else list(query_indices)
    agent.prepare(env)
    selections = agent.select_many(env, indices)
    for i, sel in zip(indices, selections):
        if len(set(sel)) != len(sel) or any(not 0 <= a < len(env.pool) for a in sel):
            raise ValueError(f"agent {agent.name!r} selected invalid pool indices {sel} for query {i}")
    engine = env.engine if engine is None else engine
    result = Evaluation(agent.name)
    before = engine.stats.llm_calls
    for lo in tqdm(range(0, len(indices), batch_size), desc=f"evaluate {agent.name}", unit="batch",
                   disable=not progress, leave=False):
        batch = list(zip(indices[lo:lo + batch_size], selections[lo:lo + batch_size]))
        scored = engine.score([([env.pool[a] for a in sel], env.queries[i]) for i, sel in batch])
        for (i, sel), s in zip(batch, scored):
            result.per_query.append({"query_index": i, "query": env.queries[i].instruction,
                                     "input": env.queries[i].input, "selection": list(sel),
                                     "exemplars": [env.pool[a].instruction + " | " + env.pool[a].input for a in sel],
                                     "generation": s.generation, "reference": s.reference,
                                     "reward": float(s.reward), **{k: float(v) for k, v in s.components.items()}})
    result.llm_calls = engine.stats.llm_calls - before
    return result
