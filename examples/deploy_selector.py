"""Deploy a selector: train briefly, save, reload in a fresh process, pick exemplars for new instructions.

The reloading process loads no LLM: only MiniLM (to embed the new instructions) and the model's
tokenizer (to render its chat template). The prompts it prints are what you would send to the LLM
that serves your traffic (or use ``selection.messages`` with a chat-completions API).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

NEW_INSTRUCTIONS = [
    {"instruction": "Reverse the letters of this word.", "input": "lantern"},
    {"instruction": "What is the capital of this country?", "input": "Portugal"},
    {"instruction": "Write the past tense of the verb.", "input": "swim"},
]


def train_and_save(folder: str, agent_name: str, episodes: int, model: str) -> None:
    import gymnasium as gym

    import pillow_env  # noqa: F401  (registers PillowMatch-v0)
    from agents import Budget, make_agent

    venv = gym.make_vec("PillowMatch-v0", num_envs=16, vectorization_mode="vector_entry_point", model=model)
    agent = make_agent(agent_name)
    agent.fit(venv, Budget(episodes=episodes))
    print(f"saved {agent.save(folder)}")


def select(folder: str, model: str) -> None:
    from agents.selector import Selector
    from pillow_env import Example

    selector = Selector.load(folder, pool="builtin", model=model)  # the pool it was trained on
    for selection in selector.select([Example(q["instruction"], q["input"]) for q in NEW_INSTRUCTIONS]):
        print(f"\n=== {selection.query.instruction} {selection.query.input}")
        print(f"exemplars: pool{selection.indices}")
        print(selection.prompt)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="reinforce")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--folder", default="runs/deploy/agent")
    parser.add_argument("--select-only", action="store_true", help="(the fresh process) load and select")
    args = parser.parse_args()
    if args.select_only:
        select(args.folder, args.model)
    else:
        train_and_save(args.folder, args.agent, args.episodes, args.model)
        subprocess.run([sys.executable, __file__, "--select-only", "--folder", args.folder, "--model", args.model],
                       check=True)
