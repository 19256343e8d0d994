"""Transfer: a listwise agent trained on one suite selects for another, with no LLM call spent on it.

    python benchmarks/bench_transfer.py --agent-dir benchmarks/results/bench-t0/agents/listwise \
        --suite builtin [--seed 0] [--cache runs/cache.sqlite] [--out benchmarks/results/transfer.json]

The agent's matching network is re-pointed at the target suite's pool (``ListwiseAgent.transfer``)
and, like kNN, selects for the target's test queries; both selections are generated and scored by
``PillowReward`` (evaluation only), and the paired difference with its 95% bootstrap interval is
printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents import ListwiseAgent, evaluate, make_agent
from pillow_env.backends import DEFAULT_MODEL
from pillow_env.env import PillowMatchEnv
from pillow_env.stats import paired_bootstrap
from pillow_env.suite import SUITES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent-dir", type=Path, required=True, help="a saved listwise agent (e.g. a bench's)")
    parser.add_argument("--suite", choices=tuple(SUITES), default="builtin", help="the target suite")
    parser.add_argument("--seed", type=int, default=0, help="the target suite's split seed")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--cache", default=None, help="SQLite reward cache")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer.json"))
    args = parser.parse_args()
    env = PillowMatchEnv(args.suite, args.suite, split="test", suite_seed=args.seed, model=args.model,
                         cache_path=args.cache)
    agent = ListwiseAgent.load(args.agent_dir).transfer(env)
    knn = evaluate(make_agent("knn"), env)
    moved = evaluate(agent, env)
    reference = {r["query_index"]: r["reward"] for r in knn.per_query}
    paired = paired_bootstrap([r["reward"] - reference[r["query_index"]] for r in moved.per_query])
    changed = sum(set(a["selection"]) != set(b["selection"]) for a, b in zip(moved.per_query, knn.per_query))
    result = {"agent_dir": str(args.agent_dir), "suite": args.suite, "seed": args.seed, "model": args.model,
              "knn": knn.means, "transferred": moved.means, "paired_vs_knn": paired,
              "queries": len(env.queries), "selections_differing_from_knn": changed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{args.suite} test ({len(env.queries)} queries): kNN {knn.means['reward']:.3f}, transferred listwise "
          f"{moved.means['reward']:.3f}, {paired['mean']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}]; "
          f"{changed} selections differ from kNN's")


if __name__ == "__main__":
    main()
