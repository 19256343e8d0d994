"""Choose the SB3 / RLlib learners' defaults without touching the test split.

The built-in suite's training queries (its seed-0 split) are split in half by
``bench_listwise_validation.training_halves`` (the same halves): each variant (an agent name and
constructor arguments) trains on half A with a proportional budget (default 1,000 episodes for 119 queries:
the same per-query budget as 2,000 for all 238) and is judged on half B by the generation reward
the test split measures, paired with kNN's picks on the same queries (95% bootstrap interval).
Each variant is one ``pillow-env bench`` run (``OUT/<label>/``: results, curves, saved agent);
all share one reward cache. The test split is for the final ``pillow-env bench`` only.

Usage (RLlib variants need ``.venv-rllib``)::

    python benchmarks/bench_swap_defaults.py --cache runs/cache-tune.sqlite \\
        --variants '[{"agent": "a2c"}, {"agent": "a2c", "kwargs": {"algo_kwargs": {"learning_rate": 1e-4}}}]'

writes ``OUT/summary.json`` and ``OUT/summary.md`` (default OUT: ``benchmarks/results/swap-defaults``),
adding to the rows already there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_listwise_validation import training_halves

from pillow_env.bench import BenchConfig, run_bench
from pillow_env.suite import load_suite


def _label(variant: dict) -> str:
    """A folder-safe name for a variant: the agent and its arguments, flattened."""
    def flat(prefix: str, value) -> list[str]:
        if isinstance(value, dict):
            return [part for k, v in sorted(value.items()) for part in flat(k, v)]
        return [f"{prefix}={value}"]

    return "-".join([variant["agent"], *flat("", variant.get("kwargs", {}))]) or variant["agent"]


def _write_halves(out: Path, split_seed: int) -> tuple[Path, Path]:
    """Half A and half B of the built-in suite's training queries, as JSONL files under ``out``."""
    suite = load_suite("builtin", 0)
    paths = out / "half-a.jsonl", out / "half-b.jsonl"
    for path, part in zip(paths, training_halves(len(suite.train), split_seed)):
        path.write_text("".join(json.dumps(suite.train[i].to_dict()) + "\n" for i in part), encoding="utf-8")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", required=True, help='JSON list of {"agent": NAME, "kwargs": {...}}')
    parser.add_argument("--episodes", type=int, default=1000, help="training episodes on half A")
    parser.add_argument("--seed", type=int, default=0, help="agent seed")
    parser.add_argument("--split-seed", type=int, default=123)
    parser.add_argument("--cache", default=None, help="SQLite reward cache shared by every variant")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "swap-defaults")
    args = parser.parse_args()
    variants = json.loads(args.variants)
    if not isinstance(variants, list) or not all(isinstance(v, dict) and "agent" in v for v in variants):
        raise SystemExit('--variants: expected a JSON list of {"agent": NAME, "kwargs": {...}} objects')

    args.out.mkdir(parents=True, exist_ok=True)
    half_a, half_b = _write_halves(args.out, args.split_seed)
    summary_path = args.out / "summary.json"
    rows = json.loads(summary_path.read_text()) if summary_path.exists() else []
    for variant in variants:
        label = _label(variant)
        config = BenchConfig(pool="builtin", train=str(half_a), test=str(half_b), agents=["knn", variant["agent"]],
                             agent_kwargs={variant["agent"]: variant.get("kwargs", {})}, episodes=args.episodes,
                             seed=args.seed, out=str(args.out / label),
                             cache=args.cache or str(args.out / "cache.sqlite"))
        results = run_bench(config)
        record = results["agents"][variant["agent"]]
        knn = results["agents"]["knn"]
        kept = float(np.mean([a["selection"] == b["selection"] for a, b in zip(record["per_query"], knn["per_query"])]))
        row = {"label": label, **variant, "episodes": args.episodes, "reward": record["reward"],
               "knn": knn["reward"], "vs_knn": results["paired"][variant["agent"]], "same_sets_as_knn": kept,
               "train_llm_calls": record["train_llm_calls"]}
        rows = [r for r in rows if r["label"] != label] + [row]
        summary_path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["Judged on half B of the built-in training split (test split untouched); "
             f"each trained on half A. Command: see {Path(__file__).name}.", "",
             "| variant | episodes | reward | kNN | vs kNN [95% paired CI] | same sets as kNN | train LLM calls |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["vs_knn"]
        lines.append(f"| {r['label']} | {r['episodes']} | {r['reward']:.3f} | {r['knn']:.3f} | "
                     f"{p['mean']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}] | {r['same_sets_as_knn']:.0%} | "
                     f"{r['train_llm_calls']} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
