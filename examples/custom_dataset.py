"""Your own data: an Alpaca JSON file as the exemplar pool, a Dolly JSONL file as the queries.

Swap in your files (any JSON/JSONL works with a field mapping, see `load_examples`), then compare
random and kNN exemplars and look at what kNN picked for one query.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents import evaluate, make_agent
from pillow_env import load_examples
from pillow_env.env import PillowMatchEnv

HERE = Path(__file__).parent / "data"


def main(model: str = "smollm2-135m-instruct", pool_file: Path = HERE / "pool_alpaca.json",
         queries_file: Path = HERE / "queries_dolly.jsonl") -> dict[str, float]:
    pool = load_examples(pool_file)  # Alpaca: instruction / input / output
    queries = load_examples(queries_file, format="dolly")  # Dolly: instruction / context / response / category
    env = PillowMatchEnv(pool, queries, m=2, model=model)
    scores = {}
    for name in ("random", "knn"):
        result = evaluate(make_agent(name), env, progress=False)
        scores[name] = result.means["reward"]
        print(f"{name:>6}: reward {result.means['reward']:.3f}, ROUGE-L {result.means['rouge_l']:.3f}")
    first = evaluate(make_agent("knn"), env, [0], progress=False).per_query[0]
    print(f"\nquery: {first['query']} {first['input']}\nkNN picked: {first['exemplars']}\n"
          f"answer: {first['generation']!r} (reference {first['reference']!r})")
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pool", type=Path, default=HERE / "pool_alpaca.json")
    parser.add_argument("--queries", type=Path, default=HERE / "queries_dolly.jsonl")
    args = parser.parse_args()
    main(args.model, args.pool, args.queries)
