"""Choose the distilled learner's settings without touching the test split.

A built-in suite's training queries are halved (seeded; an underlying example's templates kept
in one half, see :func:`grouped_halves`): each variant of :class:`~agents.distill.DistillAgent` trains on half A (single-
exemplar likelihood scores, cached by prompt) and is judged on half B by what the test split
measures: the generation reward of the set it picks, paired with kNN's set on the same query
(each set generated once, cached). Also printed, free: the *proxy* the learner's own cross-
validation uses (the single scores of the picked entries minus kNN's, when B's singles are in the
cache from an earlier run), so one sees how far the proxy carries over to generation.

Usage: ``python benchmarks/bench_distill_validation.py --suite t0 --variants '[{}, {"answers": false}]'
--judge-queries 300 --cache runs/cache-t0.sqlite``; writes ``benchmarks/results/distill-validation-SUITE.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from agents import Budget, KNNAgent
from agents.distill import DistillAgent
from pillow_env.env import PillowMatchEnv
from pillow_env.stats import paired_bootstrap
from pillow_env.suite import SUITES, load_suite


def grouped_halves(queries: list, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half A and half B of the training queries, seeded, each underlying example (``t0``'s
    ``metadata["example"]``: its templates share the answer) whole in one half; queries without one
    are their own group. (Random halves put an example's templates on both sides: then half B's
    answers are learned from half A and the validation gain is inflated.)"""
    keys = [q.metadata.get("example", i) for i, q in enumerate(queries)]
    groups = list(dict.fromkeys(keys))
    in_a = {groups[i] for i in np.random.default_rng(split_seed).permutation(len(groups))[:len(groups) // 2]}
    a = np.array([i for i, k in enumerate(keys) if k in in_a])
    b = np.array([i for i, k in enumerate(keys) if k not in in_a])
    return np.random.default_rng(split_seed).permutation(a), np.random.default_rng(split_seed).permutation(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="builtin")
    parser.add_argument("--variants", default="[{}]", help="JSON list of DistillAgent keyword arguments")
    parser.add_argument("--judge-queries", type=int, default=None, help="judge on the first N queries of half B")
    parser.add_argument("--split-seed", type=int, default=123)
    parser.add_argument("--cache", default=None, help="SQLite reward cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(__file__).parent / "results" / f"distill-validation-{args.suite}.json"

    suite = load_suite(args.suite, 0)
    half_a, half_b = grouped_halves(suite.train, args.split_seed)
    env_a = PillowMatchEnv(suite.pool, [suite.train[i] for i in half_a], cache_path=args.cache, reward="loglik")
    env_b = PillowMatchEnv(suite.pool, [suite.train[i] for i in half_b[:args.judge_queries]], cache_path=args.cache)
    queries = list(range(len(env_b.queries)))
    judged: dict[tuple[int, tuple[int, ...]], float] = {}

    def judge(picks: list[list[int]]) -> np.ndarray:
        """Generation reward of one set per query of B (each distinct set generated once)."""
        todo = sorted({(q, tuple(p)) for q, p in enumerate(picks)} - set(judged))
        for lo in range(0, len(todo), 64):
            part = todo[lo:lo + 64]
            scored = env_b.engine.score([([env_b.pool[i] for i in p], env_b.queries[q]) for q, p in part])
            judged.update({key: s.reward for key, s in zip(part, scored)})
        return np.array([judged[(q, tuple(p))] for q, p in enumerate(picks)])

    knn_picks = KNNAgent().select_many(env_b, queries)
    knn = judge(knn_picks)
    print(f"half A: {len(env_a.queries)} training queries; half B: {len(queries)} judged; kNN on B {knn.mean():.4f}")
    rows = []
    for variant in json.loads(args.variants):
        agent = DistillAgent(**variant)
        start = time.perf_counter()
        log = agent.fit(env_a, Budget(llm_calls=agent.candidates * len(env_a.queries)), progress=True)
        fit_seconds = time.perf_counter() - start
        picks = agent.select_many(env_b, queries)
        gains = judge(picks) - knn
        result = paired_bootstrap(gains)
        changed = int(sum(p != k for p, k in zip(picks, knn_picks)))
        rows.append({"variant": variant, "gain_vs_knn": result, "changed": changed, "llm_calls_fit": log.llm_calls,
                     "chosen_temperature": log.extras["chosen_temperature"],
                     "chosen_epochs": log.extras["chosen_epochs"],
                     "cv_gain": max((h["gain"] for h in log.extras["validation"]), default=None),
                     "fit_seconds": round(fit_seconds, 1)})
        print(f"{json.dumps(variant)}: {result['mean']:+.4f} [{result['low']:+.4f}, {result['high']:+.4f}] "
              f"({changed} of {len(queries)} picks differ from kNN; chose tau {log.extras['chosen_temperature']}, "
              f"{log.extras['chosen_epochs']} epochs; {log.llm_calls} new LLM calls on A)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"suite": args.suite, "split_seed": args.split_seed, "queries_a": len(env_a.queries),
                               "queries_b": len(queries), "knn_on_b": float(knn.mean()), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
