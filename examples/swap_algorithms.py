"""Swap RL algorithms by one word: PPO, A2C, MaskablePPO and our REINFORCE on the same env and budget."""

from __future__ import annotations

import argparse

import gymnasium as gym

import pillow_env  # noqa: F401  (registers PillowMatch-v0)
from agents import Budget, evaluate, make_agent


def main(model: str = "smollm2-135m-instruct", episodes: int = 160, test_limit: int = 32,
         algorithms: tuple[str, ...] = ("ppo", "a2c", "maskable_ppo", "reinforce")) -> dict[str, float]:
    train = gym.make_vec("PillowMatch-v0", num_envs=16, vectorization_mode="vector_entry_point", model=model)
    test = gym.make("PillowMatch-v0", model=model, split="test").unwrapped
    scores = {}
    for name in algorithms:
        agent = make_agent(name)  # <- the one word
        agent.fit(train, Budget(episodes=episodes))
        scores[name] = evaluate(agent, test, list(range(test_limit))).means["reward"]
        print(f"{name:>13}: held-out reward {scores[name]:.3f}")
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--episodes", type=int, default=160)
    args = parser.parse_args()
    main(args.model, args.episodes)
