"""RLlib rollout throughput with 1 and 2 env runners against one local OpenAI-compatible server.

Starts ``transformers serve`` on the converted SmolLM2 folder, then for each runner count builds
RLlib PPO (the ``pillow_env.rllib`` config, masked module) on the built-in suite with a fresh reward
cache, runs one warm-up iteration (worker start-up, first requests) and times the next
``--iterations`` PPO iterations: episodes/s and LLM calls/s over all runners, and the ratio of 2
runners to 1 in this one run. Each setup is then replayed on the cache it filled (same seed, so the
same episodes): what the runners do when the LLM is not the bottleneck. Last, 2 runners on 2 server
replicas (``model`` as a list: runner i uses replica (i - 1) mod 2), one thread each.

Usage: ``python benchmarks/bench_rllib.py [--iterations 3] [--batch 128]``; needs the rllib and
serving extras (``make install-rllib``); writes ``benchmarks/results/rllib.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import ray
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_EPISODES_LIFETIME

from pillow_env.backends import DEFAULT_MODEL
from pillow_env.backends.hf import resolve_model
from pillow_env.backends.local_server import LocalServer
from pillow_env.env import PillowMatchEnv
from pillow_env.rllib import ppo_config


def measure(env_config: dict, runners: int, iterations: int, batch: int) -> dict:
    algo = ppo_config(env_config, num_env_runners=runners, train_batch_size=batch, minibatch_size=min(64, batch),
                      num_epochs=1).build_algo()
    try:
        before = _counts(algo.train())  # warm-up: runner start-up, env construction, first requests
        start = time.perf_counter()
        for _ in range(iterations):
            result = algo.train()
        seconds = time.perf_counter() - start
        after = _counts(result)
    finally:
        algo.stop()
    episodes, calls = after[0] - before[0], after[1] - before[1]
    return {"runners": runners, "seconds": seconds, "episodes": episodes, "llm_calls": calls,
            "episodes_per_second": episodes / seconds, "llm_calls_per_second": calls / seconds,
            "cached_episodes": after[2] - before[2], "per_runner": after[3]}


def _counts(result: dict) -> tuple[int, int, int, dict]:
    runners = result[ENV_RUNNER_RESULTS]
    pillow = runners.get("pillow", {})
    per_runner = {k: int(v) for k, v in pillow.items() if k.startswith("episodes_runner_")}
    return (int(runners.get(NUM_EPISODES_LIFETIME, 0)), int(pillow.get("llm_calls", 0)),
            int(pillow.get("cached", 0)), per_runner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed PPO iterations per runner count")
    parser.add_argument("--batch", type=int, default=128, help="env steps per iteration (train_batch_size)")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rllib.json")
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    folder = resolve_model(DEFAULT_MODEL)
    rows, replays = [], []
    with tempfile.TemporaryDirectory() as tmp:
        def run(runners: int, specs: list[str], label: str) -> dict:
            cache = Path(tmp) / f"cache-{label}.sqlite"
            env_config = PillowMatchEnv(model=specs[0], cache_path=cache, candidates=args.candidates).config()
            env_config["model"] = specs if len(specs) > 1 else specs[0]
            row = measure(env_config, runners, args.iterations, args.batch)
            rows.append({"setup": label, **row})
            print(f"{label}: {row['episodes']} episodes in {row['seconds']:.1f} s = "
                  f"{row['episodes_per_second']:.2f} episodes/s ({row['cached_episodes']} from the cache)")
            return env_config

        with LocalServer(folder, log=args.out.with_suffix(".server.log")) as server:
            configs = {runners: run(runners, [server.spec], f"{runners} runner(s), 1 server")
                       for runners in (1, 2)}
            for runners, env_config in configs.items():  # replay: same seed, the cache this setup filled
                row = measure(env_config, runners, args.iterations, args.batch)
                replays.append({"setup": f"{runners} runner(s) replaying their filled cache", **row})
                print(f"{replays[-1]['setup']}: {row['episodes_per_second']:.1f} episodes/s "
                      f"({row['cached_episodes']} of {row['episodes']} from the cache)")
        with LocalServer(folder, log=args.out.with_suffix(".replica1.log"), threads=1) as first, \
                LocalServer(folder, log=args.out.with_suffix(".replica2.log"), threads=1) as second:
            run(2, [first.spec, second.spec], "2 runners, 2 server replicas (1 thread each)")
    ray.shutdown()
    ratio = rows[1]["episodes_per_second"] / rows[0]["episodes_per_second"]
    replay_ratio = replays[1]["episodes_per_second"] / replays[0]["episodes_per_second"]
    print(f"2 runners / 1 runner: {ratio:.2f}x through the server, {replay_ratio:.2f}x on a filled cache")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "replays": replays, "ratio_2_over_1": ratio,
                                    "replay_ratio_2_over_1": replay_ratio, "batch": args.batch,
                                    "iterations": args.iterations, "ray": ray.__version__,
                                    "platform": platform.platform(), "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
