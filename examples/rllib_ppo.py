"""Ray RLlib PPO on the built-in suite, its env runners sharing one OpenAI-compatible server.

Starts ``transformers serve`` on the converted SmolLM2 folder (or uses ``--server URL#MODEL``),
trains RLlib PPO with 2 env runners (each runner process holds only the env and talks to the
server; they share one SQLite reward cache; actions are masked to each query's 8 nearest pool
entries), then evaluates the trained policy next to kNN on the held-out queries with the same
code and table as every other agent (``pillow-env bench``).
Needs ``pip install 'pillow-env[rllib,serving]'``; writes results under runs/rllib_ppo/.

    python examples/rllib_ppo.py --episodes 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pillow_env.backends.hf import resolve_model
from pillow_env.backends.local_server import LocalServer
from pillow_env.bench import BenchConfig, run_bench


def main(episodes: int = 1000, runners: int = 2, out: str = "runs/rllib_ppo", server: str | None = None,
         test_limit: int | None = None, train_batch_size: int | None = None, candidates: int = 8, seed: int = 0
         ) -> dict:
    kwargs = {"num_env_runners": runners, "seed": seed}
    if train_batch_size is not None:  # else the agent's defaults (chosen on training queries)
        kwargs |= {"train_batch_size": train_batch_size, "minibatch_size": min(32, train_batch_size)}
    local = None
    if server is None:
        Path(out).mkdir(parents=True, exist_ok=True)
        print("starting transformers serve on the converted SmolLM2 folder ...")
        local = LocalServer(resolve_model("smollm2-135m-instruct"), log=Path(out) / "server.log", threads=1)
        server = local.spec
    else:
        server = server if server.startswith("openai:") else f"openai:{server}"
    try:
        config = BenchConfig(agents=["knn", "rllib_ppo"], model=server, episodes=episodes, out=out,
                             test_limit=test_limit, seed=seed, candidates=candidates,
                             agent_kwargs={"rllib_ppo": kwargs})
        return run_bench(config)
    finally:
        if local is not None:
            local.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000, help="training episodes over all runners")
    parser.add_argument("--runners", type=int, default=2, help="RLlib env runners")
    parser.add_argument("--out", default="runs/rllib_ppo")
    parser.add_argument("--server", default=None, help="an existing server: URL#MODEL[#TOKENIZER] (default: start one)")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test queries (default: all)")
    parser.add_argument("--train-batch-size", type=int, default=None,
                        help="env steps per PPO iteration (default: the rllib_ppo agent's)")
    parser.add_argument("--candidates", type=int, default=8, help="shortlist: the C nearest pool entries")
    args = parser.parse_args()
    main(args.episodes, args.runners, args.out, args.server, args.test_limit, args.train_batch_size, args.candidates)
