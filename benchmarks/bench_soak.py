"""Soak: many episodes through the vector env with the disk cache on; RSS and episodes/s at intervals.

Random valid actions on the real defaults (SmolLM2 + MiniLM), ``--queries`` training queries and a
``--candidates`` shortlist, so the first few hundred episodes generate and the rest mostly hit the
caches: what a long training run does to memory and speed once its episodes start repeating.

``--reward exact_match`` uses a plain reward function with no declared ``fingerprint``: its scores
are never cached, so every cache hit is rescored from the cached generation (the replay rate of
a custom reward).

Usage: ``python benchmarks/bench_soak.py [--episodes 10000] [--reward pillow|exact_match]``; writes
``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from pillow_env.rewards import exact_match
from pillow_env.suite import builtin_suite
from pillow_env.vector import PillowMatchVectorEnv


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain_exact_match(predictions, references):
    """A user's reward as written: a function with no ``fingerprint``."""
    return exact_match(predictions, references)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--every", type=int, default=1000, help="report every N episodes")
    parser.add_argument("--reward", choices=("pillow", "exact_match"), default="pillow",
                        help="PillowReward (scores cached) or a plain function without a fingerprint (rescored)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = parser.parse_args()
    suite = builtin_suite(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        venv = PillowMatchVectorEnv(args.num_envs, pool=suite.pool, queries=suite.train[:args.queries],
                                    candidates=args.candidates, cache_path=Path(tmp) / "cache.sqlite",
                                    reward=_plain_exact_match if args.reward == "exact_match" else None)
        venv.reset(seed=0)
        points, episodes, start = [], 0, time.perf_counter()
        last_t, last_episodes = start, 0
        while episodes < args.episodes:
            masks = venv.action_masks()
            actions = [int(rng.choice(np.flatnonzero(m))) for m in masks]
            _, _, terminated, truncated, _ = venv.step(actions)
            episodes += int((terminated | truncated).sum())
            if episodes - last_episodes >= args.every:
                now = time.perf_counter()
                stats = venv.engine.stats
                points.append({"episodes": episodes, "seconds": now - start, "rss_mb": rss_mb(),
                               "episodes_per_second": (episodes - last_episodes) / (now - last_t),
                               "generations": stats.generations, "cache_hits": stats.cache_hits})
                print(f"{episodes:>6} episodes  RSS {points[-1]['rss_mb']:.0f} MB  "
                      f"{points[-1]['episodes_per_second']:.0f} episodes/s  generations {stats.generations}")
                last_t, last_episodes = now, episodes
        venv.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"episodes": episodes, "reward": args.reward, "num_envs": args.num_envs, "queries": args.queries,
                                    "candidates": args.candidates, "points": points,
                                    "platform": platform.platform()}, indent=2))


if __name__ == "__main__":
    main()
