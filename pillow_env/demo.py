"""The README's main job (for now): how much do the right exemplars help a small LLM?

Runs the built-in suite's test queries through the real defaults (SmolLM2 + MiniLM) three ways:
no exemplars, ``shots`` random pool exemplars, and ``shots`` pool exemplars of the query's own task.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backbone import Backbone
from .data import Example
from .rewards import PillowReward
from .suite import builtin_suite

Selector = Callable[[Example], list[Example]]


def score_selections(backbone: Backbone, reward: PillowReward, queries: Sequence[Example],
                     selections: Sequence[Sequence[Example]], *, max_new_tokens: int = 24,
                     batch_size: int = 16, desc: str = "") -> dict[str, np.ndarray]:
    """Generate for every (exemplars, query) pair in batches and score against the references."""
    prompts = [backbone.renderer.render(ex, q) for ex, q in zip(selections, queries)]
    generations: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", leave=False):
        generations += backbone.generate(prompts[start:start + batch_size], max_new_tokens, batch_size=batch_size)
    return reward(generations, [q.output for q in queries])


def run_demo(model: str = "smollm2-135m-instruct", *, shots: int = 2, queries: int | None = None,
             seed: int = 0, max_new_tokens: int = 24, out: Path | None = None) -> dict[str, dict[str, float]]:
    suite = builtin_suite(seed)
    test = suite.test if queries is None else suite.test[:queries]
    by_task: dict[str | None, list[Example]] = {}
    for ex in suite.pool:
        by_task.setdefault(ex.task, []).append(ex)
    rng = random.Random(seed)
    settings: dict[str, Selector] = {
        "zero-shot": lambda q: [],
        f"random {shots}-shot": lambda q: rng.sample(suite.pool, shots),
        f"same-task {shots}-shot": lambda q: rng.sample(by_task[q.task], shots),
    }
    t0 = time.perf_counter()
    backbone = Backbone.from_pretrained(model)
    reward = PillowReward()
    print(f"loaded {model} and MiniLM in {time.perf_counter() - t0:.1f} s; "
          f"{len(test)} test queries, pool of {len(suite.pool)}")
    results: dict[str, dict[str, float]] = {}
    for name, select in settings.items():
        t = time.perf_counter()
        scores = score_selections(backbone, reward, test, [select(q) for q in test],
                                  max_new_tokens=max_new_tokens, desc=name)
        results[name] = {k: float(v.mean()) for k, v in scores.items()}
        results[name]["seconds"] = time.perf_counter() - t
    print(format_table(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": model, "queries": len(test), "seed": seed, "results": results}, indent=2))
        print(f"wrote {out}")
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    cols = ["reward", "rouge_l", "semantic", "exact_match", "seconds"]
    lines = ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c != "seconds" else f"{row[c]:.1f}"
                                                 for c in cols) + " |")
    return "\n".join(lines)
