"""How much can any selector gain over kNN within a shortlist? And is the likelihood a usable signal?

For each held-out query of the built-in suite, score every unordered set of ``m`` exemplars among
its ``C`` nearest pool entries (the shortlist kNN ranks by the same embeddings), each set placed in
the prompt nearest-last as kNN does, with the generation-based ``PillowReward``. Report the mean
reward of

- the kNN set (ranks 1..m),
- the best *fixed* rank set (the rank combination with the highest mean over queries),
- the mean set (what a random pick from the shortlist gets),
- the per-query best set (an oracle: the ceiling for any selector restricted to the shortlist).

On the first ``--loglik-queries`` queries the same sets are also scored by the likelihood signal
(``reward="loglik"``): the cost of one pass against one generation, the per-query Spearman rank
correlation of the two signals over the shortlist sets, and the ``PillowReward`` of the set the
likelihood ranks best, against the kNN set's.

Usage: ``python benchmarks/bench_headroom.py [--candidates 8] [--cache runs/headroom.sqlite]``.
Writes ``benchmarks/results/headroom.json`` and ``headroom.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from pillow_env.encoder import load_encoder
from pillow_env.engine import RewardEngine
from pillow_env.resources import DEFAULT_MODEL, embed_examples, make_engine, shared_backend
from pillow_env.stats import paired_bootstrap
from pillow_env.suite import SUITES, load_suite


def score_all(engine: RewardEngine, requests: list, desc: str, chunk: int = 64) -> np.ndarray:
    out: list[float] = []
    for lo in tqdm(range(0, len(requests), chunk), desc=desc, unit="batch"):
        out += [s.reward for s in engine.score(requests[lo:lo + chunk])]
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--candidates", type=int, default=8, help="shortlist size C")
    parser.add_argument("--shots", type=int, default=2, help="exemplars per prompt (m)")
    parser.add_argument("--queries", type=int, default=None, help="first N test queries (default: all)")
    parser.add_argument("--loglik-queries", type=int, default=40, help="queries also scored by likelihood")
    parser.add_argument("--seed", type=int, default=0, help="built-in suite seed")
    parser.add_argument("--suite", choices=tuple(SUITES), default="builtin", help="built-in suite")
    parser.add_argument("--cache", default=None, help="SQLite reward cache (share it with `bench --cache`)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "headroom")
    args = parser.parse_args()

    suite = load_suite(args.suite, args.seed)
    queries = suite.test[:args.queries]
    encoder = load_encoder("minilm")
    backbone = shared_backend(args.model)
    generate = make_engine(backbone, encoder, cache_path=args.cache)
    loglik = make_engine(backbone, encoder, cache_path=args.cache, signal="loglik")

    keys = embed_examples(encoder, suite.pool, with_output=False)
    similarity = embed_examples(encoder, queries, with_output=False) @ keys.T
    shortlists = np.argsort(-similarity, axis=1, kind="stable")[:, :args.candidates]
    combos = list(itertools.combinations(range(args.candidates), args.shots))  # rank sets, nearest first
    knn_combo = combos.index(tuple(range(args.shots)))
    requests = [([suite.pool[shortlists[q, r]] for r in reversed(combo)], queries[q])  # nearest last
                for q in range(len(queries)) for combo in combos]

    rewards = score_all(generate, requests, "PillowReward").reshape(len(queries), len(combos))
    knn = rewards[:, knn_combo]
    fixed = int(rewards.mean(0).argmax())
    table = {
        "knn set (ranks 1..m)": knn,
        f"best fixed rank set {tuple(r + 1 for r in combos[fixed])}": rewards[:, fixed],
        "mean set (random in shortlist)": rewards.mean(1),
        "per-query best set (oracle)": rewards.max(1),
    }
    rows = [{"set": name, "reward": float(v.mean()), "vs_knn": paired_bootstrap(v - knn)}
            for name, v in table.items()]

    n_ll = min(args.loglik_queries, len(queries))
    ll_rewards = score_all(loglik, requests[:n_ll * len(combos)], "loglik").reshape(n_ll, len(combos))
    rho = [spearmanr(ll_rewards[q], rewards[q]).statistic for q in range(n_ll)]
    rho = np.array([r for r in rho if np.isfinite(r)])
    picked = rewards[np.arange(n_ll), ll_rewards.argmax(1)]
    gen_s = generate.stats.generation_seconds / max(generate.stats.generations, 1)
    ll_s = loglik.stats.generation_seconds / max(loglik.stats.loglik_passes, 1)
    likelihood = {
        "queries": n_ll,
        "seconds_per_generation": gen_s if generate.stats.generations else None,
        "seconds_per_loglik_pass": ll_s if loglik.stats.loglik_passes else None,
        "cost_ratio_loglik_over_generation": ll_s / gen_s if generate.stats.generations and
        loglik.stats.loglik_passes else None,
        "spearman_mean": float(rho.mean()), "spearman_median": float(np.median(rho)),
        "spearman_queries": int(rho.size),
        "loglik_best_set_reward": float(picked.mean()), "knn_set_reward": float(knn[:n_ll].mean()),
        "loglik_best_vs_knn": paired_bootstrap(picked - knn[:n_ll]),
        "oracle_reward": float(rewards[:n_ll].max(1).mean()),
    }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "candidates": args.candidates, "shots": args.shots, "queries": len(queries),
              "sets_per_query": len(combos), "rows": rows, "likelihood": likelihood,
              "platform": platform.platform(), "engine": generate.stats.as_dict()}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"{len(queries)} held-out queries, all {len(combos)} sets of {args.shots} among the "
             f"{args.candidates} nearest pool entries, PillowReward (generation):", "",
             "| set | reward | vs kNN [95% paired CI] |", "|---|---|---|"]
    for r in rows:
        d = r["vs_knn"]
        lines.append(f"| {r['set']} | {r['reward']:.3f} | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")
    d = likelihood["loglik_best_vs_knn"]
    ratio = likelihood["cost_ratio_loglik_over_generation"]
    lines += ["", f"Likelihood signal on {n_ll} queries: one pass costs "
              f"{'n/a (cached)' if ratio is None else f'{ratio:.2f}x'} a generation; per-query Spearman with "
              f"PillowReward mean {likelihood['spearman_mean']:.2f} (median {likelihood['spearman_median']:.2f}); "
              f"the set it ranks best scores {likelihood['loglik_best_set_reward']:.3f} vs kNN "
              f"{likelihood['knn_set_reward']:.3f} ({d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]), "
              f"oracle {likelihood['oracle_reward']:.3f}."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
