"""Episodes per second: the naive loop vs the batched vector env vs the vector env on a warm cache.

The same episodes (query, m = 2 exemplars) for each contender, on the real defaults (SmolLM2 +
MiniLM, built-in suite), in one run:

  (a) naive: one env's worth of work, the loop a user would write: render, ``generate([prompt])``,
      score, per episode;
  (b) ``PillowMatchVectorEnv`` with N sub-envs and a fresh reward engine + disk cache;
  (c) (b) again with a new engine (empty memory) on the disk cache (b) left behind, the episode
      list repeated so the timing is not dominated by start-up.

Prints and writes JSON: episodes/s, the ratios b/a and c/a, where the time went, and whether all
three produced identical rewards. Usage: ``python benchmarks/bench_engine.py [--episodes 64]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pillow_env.resources import DEFAULT_MODEL, make_engine, shared_backend
from pillow_env.encoder import load_encoder
from pillow_env.rewards import PillowReward
from pillow_env.suite import builtin_suite
from pillow_env.vector import PillowMatchVectorEnv


def naive(backbone, reward, pool, queries, episodes, max_new_tokens):
    times = {"generation": 0.0, "scoring": 0.0}
    rewards = []
    start = time.perf_counter()
    for q, actions in tqdm(episodes, desc="(a) naive loop", unit="ep"):
        prompt = backbone.renderer.render([pool[a] for a in actions], queries[q])
        t = time.perf_counter()
        (generation,) = backbone.generate([prompt], max_new_tokens)
        times["generation"] += time.perf_counter() - t
        t = time.perf_counter()
        rewards.append(float(reward([generation], [queries[q].output])["reward"][0]))
        times["scoring"] += time.perf_counter() - t
    wall = time.perf_counter() - start
    return rewards, wall, times


def vectorised(venv, episodes, repeats=1, desc=""):
    n = venv.num_envs
    rewards = []
    start = time.perf_counter()
    for _ in range(repeats):
        for lo in tqdm(range(0, len(episodes), n), desc=desc, unit="batch", leave=False):
            chunk = episodes[lo:lo + n]
            venv.reset(options={"query_index": [q for q, _ in chunk]})
            for step in range(len(chunk[0][1])):
                _, r, term, _, _ = venv.step(np.array([actions[step] for _, actions in chunk]))
            assert term.all()
            rewards.extend(r.tolist())
    return rewards[:len(episodes)], time.perf_counter() - start


def share(wall: float, stats: dict) -> dict[str, float]:
    rest = wall - stats["generation_seconds"] - stats["scoring_seconds"]
    return {"generation": stats["generation_seconds"] / wall, "scoring": stats["scoring_seconds"] / wall,
            "rest": rest / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=50, help="passes over the episodes in (c)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine.json"))
    args = parser.parse_args()
    if args.episodes % args.num_envs:
        parser.error("--episodes must be a multiple of --num-envs")

    suite = builtin_suite(0)
    rng = np.random.default_rng(args.seed)
    episodes = [(int(rng.integers(len(suite.train))), [int(a) for a in rng.choice(len(suite.pool), 2, replace=False)])
                for _ in range(args.episodes)]
    backbone = shared_backend(args.model)
    encoder = load_encoder("minilm")
    reward = PillowReward(encoder=encoder)
    reward(["warm-up"], ["warm-up"])

    rewards_a, wall_a, times_a = naive(backbone, reward, suite.pool, suite.train, episodes, args.max_new_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "rewards.sqlite"
        env_kwargs = dict(pool=suite.pool, queries=suite.train, encoder=encoder)
        engine_b = make_engine(backbone, reward=reward, max_new_tokens=args.max_new_tokens, batch_size=args.num_envs,
                                cache_path=cache)
        venv_b = PillowMatchVectorEnv(args.num_envs, engine=engine_b, **env_kwargs)
        rewards_b, wall_b = vectorised(venv_b, episodes, desc="(b) vector env")
        engine_b.close()

        engine_c = make_engine(backbone, reward=reward, max_new_tokens=args.max_new_tokens, batch_size=args.num_envs,
                                cache_path=cache)
        venv_c = PillowMatchVectorEnv(args.num_envs, engine=engine_c, **env_kwargs)
        rewards_c, wall_c = vectorised(venv_c, episodes, repeats=args.repeats, desc="(c) warm cache")
        stats_b, stats_c = engine_b.stats.as_dict(), engine_c.stats.as_dict()

    eps_a, eps_b = len(episodes) / wall_a, len(episodes) / wall_b
    eps_c = len(episodes) * args.repeats / wall_c
    mismatches = [i for i, (a, b) in enumerate(zip(rewards_a, rewards_b)) if abs(a - b) > 1e-6]
    result = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": args.model, "episodes": len(episodes), "num_envs": args.num_envs, "repeats_c": args.repeats,
        "episodes_per_second": {"a_naive": eps_a, "b_vector": eps_b, "c_vector_warm_cache": eps_c},
        "ratios": {"b_over_a": eps_b / eps_a, "c_over_a": eps_c / eps_a},
        "time_share": {
            "a_naive": {"generation": times_a["generation"] / wall_a, "scoring": times_a["scoring"] / wall_a,
                        "rest": 1 - (times_a["generation"] + times_a["scoring"]) / wall_a},
            "b_vector": share(wall_b, stats_b),
            "c_vector_warm_cache": share(wall_c, stats_c),
        },
        "engine_stats": {"b": stats_b, "c": stats_c},
        "identical_rewards": {"a_vs_b": not mismatches, "b_vs_c": rewards_b == rewards_c,
                              "a_vs_b_mismatched_episodes": mismatches},
        "mean_reward": float(np.mean(rewards_b)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("episodes_per_second", "ratios", "time_share", "identical_rewards")},
                     indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
