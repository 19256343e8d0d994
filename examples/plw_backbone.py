"""Train a prompt-loss-weighted LoRA adapter, then match exemplars with it in the env.

PLW 0.1 (the small non-zero weight the PLW paper found helpful on short-completion data) on the
built-in suite's training split; then kNN 2-shot through PillowMatch-v0 with and without it.
"""

from __future__ import annotations

import argparse

from agents import evaluate, make_agent
from pillow_env.env import PillowMatchEnv
from pillow_env.suite import builtin_suite
from pillow_env.training import TrainConfig, train_lora


def main(model: str = "smollm2-135m-instruct", max_steps: int = 30, out: str = "runs/plw-adapter",
         test_limit: int = 48) -> dict[str, float]:
    suite = builtin_suite(0)
    adapter = train_lora(model, suite.train, TrainConfig(plw=0.1, lr=5e-4, max_steps=max_steps), output_dir=out)
    scores = {}
    for label, adapter_dir in (("base", None), ("plw=0.1 adapter", str(adapter))):
        env = PillowMatchEnv(suite.pool, suite.test, model=model, adapter=adapter_dir)
        scores[label] = evaluate(make_agent("knn"), env, list(range(test_limit)), progress=False).means["rouge_l"]
        print(f"{label:>16}: kNN 2-shot ROUGE-L {scores[label]:.3f}")
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--out", default="runs/plw-adapter")
    args = parser.parse_args()
    main(args.model, args.max_steps, args.out)
