"""The README's main job (for now): how much do the right exemplars help a small LLM?

Runs a built-in suite's test queries (``builtin`` by default, ``t0`` or ``selfinstruct``) through the real defaults
(SmolLM2 + MiniLM) three ways: no exemplars, ``shots`` random pool exemplars, and ``shots`` pool exemplars of the
query's own task (``selfinstruct``, where every query is its own task: the ``shots`` most similar pool exemplars).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backends import DEFAULT_MODEL, public_spec
from .data import Example
from .engine import RewardEngine
from .encoder import load_encoder
from .resources import embed_examples, make_engine
from .suite import load_suite, suite_max_new_tokens

Chooser = Callable[[Example], list[Example]]  # query -> its exemplars


def score_selections(engine: RewardEngine, queries: Sequence[Example], selections: Sequence[Sequence[Example]],
                     *, batch_size: int = 16, desc: str = "") -> dict[str, float]:
    """Mean reward components of every (exemplars, query) pair, scored through the engine in batches."""
    results = []
    for start in tqdm(range(0, len(queries), batch_size), desc=desc, unit="batch", leave=False):
        results += engine.score(list(zip(selections[start:start + batch_size], queries[start:start + batch_size])))
    keys = ["reward", *results[0].components]
    return {k: float(np.mean([r.reward if k == "reward" else r.components[k] for r in results])) for k in keys}


def run_demo(model: str = DEFAULT_MODEL, *, shots: int = 2, queries: int | None = None,
             seed: int = 0, max_new_tokens: int | None = None, out: Path | None = None,
             suite: str = "builtin") -> dict[str, dict[str, float]]:
    if max_new_tokens is None:
        max_new_tokens = suite_max_new_tokens(suite) or 24
    suite = load_suite(suite, seed)
    test = suite.test if queries is None else suite.test[:queries]
    by_task: dict[str | None, list[Example]] = {}
    for ex in suite.pool:
        by_task.setdefault(ex.task, []).append(ex)
    rng = random.Random(seed)
    settings: dict[str, Chooser] = {
        "zero-shot": lambda q: [],
        f"random {shots}-shot": lambda q: rng.sample(suite.pool, shots),
    }
    if all(q.task in by_task for q in test):
        settings[f"same-task {shots}-shot"] = lambda q: rng.sample(by_task[q.task], shots)
    else:  # every query is its own task: the most similar pool exemplars (nearest last) stand in
        encoder = load_encoder("minilm")
        similarity = (embed_examples(encoder, test, with_output=False)
                      @ embed_examples(encoder, suite.pool, with_output=False).T)
        nearest = {q: [suite.pool[j] for j in np.argsort(-row, kind="stable")[:shots][::-1]]
                   for q, row in zip(test, similarity)}
        settings[f"nearest {shots}-shot"] = lambda q: nearest[q]
    t0 = time.perf_counter()
    engine = make_engine(model, max_new_tokens=max_new_tokens)
    print(f"loaded {public_spec(model)} and MiniLM in {time.perf_counter() - t0:.1f} s; "
          f"{len(test)} test queries, pool of {len(suite.pool)}")
    results: dict[str, dict[str, float]] = {}
    for name, select in settings.items():
        t = time.perf_counter()
        results[name] = score_selections(engine, test, [select(q) for q in test], desc=name)
        results[name]["seconds"] = time.perf_counter() - t
    print(format_table(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": public_spec(model), "queries": len(test), "seed": seed, "results": results}, indent=2))
        print(f"wrote {out}")
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    cols = ["reward", "rouge_l", "semantic", "exact_match", "seconds"]
    lines = ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c != "seconds" else f"{row[c]:.1f}"
                                                 for c in cols) + " |")
    return "\n".join(lines)
