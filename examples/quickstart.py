"""Quickstart: does a learned exemplar selector beat the simple ones? (~10 min on 2 CPU cores)

Trains the listwise matching network (2,000 likelihood-scored exemplar sets, cross-validated over
the training queries) on the built-in suite, then compares it with zero-shot, random and kNN
exemplars on the held-out queries, all on the embedded defaults (SmolLM2-135M-Instruct + MiniLM).
Prints the table, with each agent's paired difference to kNN; writes results.json, results.md and
curves.png under runs/quickstart/.
"""

from __future__ import annotations

import argparse

from pillow_env.bench import BenchConfig, run_bench


def main(model: str = "smollm2-135m-instruct", episodes: int = 2000, out: str = "runs/quickstart",
         test_limit: int | None = None) -> dict:
    config = BenchConfig(agents=["zero_shot", "random", "knn", "listwise"], model=model, episodes=episodes,
                         out=out, test_limit=test_limit, train_reward="loglik")
    return run_bench(config)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--episodes", type=int, default=2000, help="LLM calls the listwise agent may spend")
    parser.add_argument("--out", default="runs/quickstart")
    args = parser.parse_args()
    main(args.model, args.episodes, args.out)
