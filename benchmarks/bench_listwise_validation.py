"""Compare listwise-agent variants without touching the test split.

A built-in suite's training queries are split in half (seeded): each variant trains on half A
with a proportional budget (default 1,000 LLM calls for 119 queries, the same per-query budget as
2,000 for all 238), and is judged on half B, where *every* set of each query's shortlist has been
scored by the likelihood signal, so whatever a variant picks can be looked up without another LLM
call. Reported per variant and seed: the mean likelihood reward of its picks on B minus the kNN
set's, with a 95% paired bootstrap interval; then the seed average, paired against the first
variant's (at the first margin); the likelihood-best set of each query (the per-query oracle)
shows the room. ``--judge generate`` judges by what the test split measures instead: the
generation reward of each picked set (generated once, cached). A model can rank sets much better
by likelihood and no better by generation (README), so choose defaults by generation.
``--margins`` evaluates several selection margins (``ListwiseAgent.margin``) on each trained agent;
``--swap`` trains on half B and judges on half A (where all sets are scored too). The test split
is for the final `pillow-env bench` only.

Usage: ``python benchmarks/bench_listwise_validation.py --variants '[{}, {"model": "linear"}]' --seeds 0,1``
(``--cache runs/cache.sqlite`` to reuse scored sets); writes ``benchmarks/results/listwise-validation.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agents import Budget, FitRecord, ListwiseAgent
from pillow_env.suite import SUITES, load_suite
from pillow_env.env import PillowMatchEnv
from pillow_env.stats import paired_bootstrap


def training_halves(n: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of half A and half B of ``n`` training queries, seeded (shared with bench_swap_defaults.py)."""
    order = np.random.default_rng(split_seed).permutation(n)
    return order[:n // 2], order[n // 2:]


def _agent_class(spec: str | None):
    """``ListwiseAgent``, or ``"path/to/file.py:Class"`` (a subclass under trial) from the variant's ``cls``."""
    if spec is None:
        return ListwiseAgent
    import importlib.util

    path, name = spec.rsplit(":", 1)
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def _chosen(log: FitRecord) -> str:
    """What cross-validation chose: kNN, the linear ranker's penalty or the matching network's epochs."""
    if log.extras.get("chosen_penalty") is not None:
        return f"linear, penalty {log.extras['chosen_penalty']}"
    return f"matching, {log.extras['chosen_epochs']} epochs" if log.extras.get("chosen_epochs") else "kNN"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="[{}]", help="JSON list of ListwiseAgent keyword arguments (a "
                        "'cls': 'file.py:Class' entry trains a subclass under trial instead)")
    parser.add_argument("--seeds", default="0,1", help="agent seeds, comma-separated")
    parser.add_argument("--budget", type=int, default=1000, help="LLM calls for training on half A")
    parser.add_argument("--margins", default=None, help="selection margins to evaluate on each trained agent "
                        "(default: the agent's own)")
    parser.add_argument("--queries", type=int, default=None, help="train on this many queries of half A "
                        "(a different random subset per seed; default: all of them), to see how the gain "
                        "grows with the number of training queries")
    parser.add_argument("--suite", choices=tuple(SUITES), default="builtin", help="built-in suite (its seed-0 split)")
    parser.add_argument("--judge-queries", type=int, default=None,
                        help="judge on the first N queries of half B only (every set of each is scored)")
    parser.add_argument("--split-seed", type=int, default=123)
    parser.add_argument("--swap", action="store_true", help="train on half B and judge on half A instead")
    parser.add_argument("--judge", choices=("loglik", "generate"), default="loglik",
                        help="judge picks on B by the likelihood signal (all sets scored once) or by the "
                        "generation reward the test split uses (each picked set generated once, cached)")
    parser.add_argument("--cache", default=None, help="SQLite reward cache")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "listwise-validation.json")
    args = parser.parse_args()
    variants = json.loads(args.variants)
    seeds = [int(s) for s in args.seeds.split(",")]
    margins = [None] if args.margins is None else [float(m) for m in args.margins.split(",")]

    suite = load_suite(args.suite, 0)
    halves = training_halves(len(suite.train), args.split_seed)[::-1 if args.swap else 1]  # (train, judge)
    env_a = PillowMatchEnv(suite.pool, [suite.train[i] for i in halves[0]], cache_path=args.cache, reward="loglik")
    env_b = PillowMatchEnv(suite.pool, [suite.train[i] for i in halves[1][:args.judge_queries]], cache_path=args.cache)

    # Half B: every shortlist set of every query, by the likelihood signal.
    probe = ListwiseAgent()
    probe.prepare(env_b)
    scorer = env_b.engine.with_signal("loglik")
    tables, knn = [], []
    for q in range(len(env_b.queries)):
        sets = probe.candidate_sets(env_b, q)  # kNN's first
        knn.append(sets[0])
        rewards = [s.reward for s in scorer.score([([env_b.pool[i] for i in s], env_b.queries[q]) for s in sets])]
        tables.append(dict(zip(sets, rewards)))
    judged: dict[tuple[int, tuple[int, ...]], float] = {}

    def judge(picks: list[tuple[int, ...]]) -> np.ndarray:
        """Rewards of one set per query of B, by the chosen judge."""
        if args.judge == "loglik":
            return np.array([tables[q][p] for q, p in enumerate(picks)])
        todo = sorted({(q, p) for q, p in enumerate(picks)} - set(judged))
        scored = env_b.engine.score([([env_b.pool[i] for i in p], env_b.queries[q]) for q, p in todo])
        judged.update({key: s.reward for key, s in zip(todo, scored)})
        return np.array([judged[(q, p)] for q, p in enumerate(picks)])

    knn_reward = judge(knn)
    # the room: the set the likelihood ranks best on each query of B (the per-query oracle when so judged)
    oracle = paired_bootstrap(judge([max(t, key=t.get) for t in tables]) - knn_reward)
    print(f"half B: {len(knn)} queries, all sets scored by likelihood ({scorer.stats.loglik_passes} new passes); "
          f"its best-ranked set vs kNN, judged by {args.judge}: {oracle['mean']:+.4f} "
          f"[{oracle['low']:+.4f}, {oracle['high']:+.4f}]")

    rows, first = [], None
    for variant in variants:
        per_margin: dict[float | None, list[np.ndarray]] = {margin: [] for margin in margins}
        for seed in seeds:
            kwargs = {"seed": seed, **variant}
            agent = _agent_class(kwargs.pop("cls", None))(**kwargs)
            train_env = env_a
            if args.queries is not None:
                subset = np.random.default_rng(1000 + seed).permutation(len(env_a.queries))[:args.queries]
                train_env = PillowMatchEnv(suite.pool, [env_a.queries[i] for i in subset],
                                           cache_path=args.cache, reward="loglik")
            log = agent.fit(train_env, Budget(llm_calls=args.budget), progress=False)
            own = agent.margin
            for margin in margins:  # a selection-time setting: one trained agent serves every margin
                agent.margin = own if margin is None else margin
                picks = agent.select_many(env_b, list(range(len(knn))))
                gains = judge([tuple(p) for p in picks]) - knn_reward
                per_margin[margin].append(gains)
                result = paired_bootstrap(gains)
                rows.append({"variant": variant, "margin": agent.margin, "seed": seed, "gain_vs_knn": result,
                             "changed": int(sum(tuple(p) != k for p, k in zip(picks, knn))),
                             "scored": log.episodes, "chosen": _chosen(log)})
                print(f"{json.dumps(variant)} margin {agent.margin} seed {seed}: {result['mean']:+.4f} "
                      f"[{result['low']:+.4f}, {result['high']:+.4f}] ({rows[-1]['changed']} picks differ from "
                      f"kNN; {log.episodes} sets scored on A, chose {_chosen(log)})")
        for margin, gains in per_margin.items():
            averaged = np.mean(gains, axis=0)
            mean = paired_bootstrap(averaged)
            first = averaged if first is None else first
            versus = paired_bootstrap(averaged - first)  # paired against the first variant and margin
            label = "own" if margin is None else margin  # None: each agent's own (default) margin
            rows.append({"variant": variant, "margin": label, "seed": "mean", "gain_vs_knn": mean,
                         "vs_first": versus})
            print(f"{json.dumps(variant)} margin {label} mean over seeds: {mean['mean']:+.4f} [{mean['low']:+.4f}, "
                  f"{mean['high']:+.4f}]; vs the first: {versus['mean']:+.4f} [{versus['low']:+.4f}, "
                  f"{versus['high']:+.4f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"suite": args.suite, "budget": args.budget, "split_seed": args.split_seed, "swap": args.swap,
                                    "judge": args.judge,
                                    "queries_a": len(env_a.queries) if args.queries is None else args.queries,
                                    "queries_b": len(knn), "oracle_vs_knn": oracle, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
