"""vLLM vs transformers on one GPU: the same kNN 2-shot episodes of the built-in test queries.

Prints episodes/s for both backends (each on a fresh engine, no cache), the share of identical
greedy generations, and the mean absolute reward difference (bf16 kernels differ in the last
bits, so a few generations may differ). Run through ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from agents import make_agent
from pillow_env.backends import DEFAULT_MODEL
from pillow_env.backends import load_backend
from pillow_env.encoder import load_encoder
from pillow_env.resources import make_engine
from pillow_env.env import PillowMatchEnv
from pillow_env.suite import builtin_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--queries", type=int, default=119)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args()
    suite = builtin_suite(0)
    encoder = load_encoder("minilm")
    env = PillowMatchEnv(suite.pool, suite.test[:args.queries], encoder=encoder)
    selections = make_agent("knn").select_many(env, list(range(len(env.queries))))
    requests = [([suite.pool[i] for i in sel], q) for sel, q in zip(selections, env.queries)]
    rows = {}
    for spec in (args.model, f"vllm:{args.model}"):
        backend = load_backend(spec)
        engine = make_engine(backend, encoder, batch_size=len(requests))
        engine.score(requests[:4])  # warm-up (CUDA graphs, kernels)
        engine = make_engine(backend, encoder, batch_size=len(requests))
        start = time.perf_counter()
        scored = engine.score(requests)
        seconds = time.perf_counter() - start
        rows[spec] = {"episodes_per_second": len(requests) / seconds, "seconds": seconds,
                      "generations": [s.generation for s in scored], "rewards": [s.reward for s in scored]}
        print(f"{spec}: {len(requests) / seconds:.1f} episodes/s")
    hf, vl = rows[args.model], rows[f"vllm:{args.model}"]
    same = float(np.mean([a == b for a, b in zip(hf["generations"], vl["generations"])]))
    diff = float(np.mean(np.abs(np.array(hf["rewards"]) - np.array(vl["rewards"]))))
    summary = {"queries": len(requests), "speedup_vllm_over_transformers":
               vl["episodes_per_second"] / hf["episodes_per_second"], "identical_generations": same,
               "mean_abs_reward_difference": diff, "mean_reward_transformers": float(np.mean(hf["rewards"])),
               "mean_reward_vllm": float(np.mean(vl["rewards"])), "backends": rows}
    print(f"vLLM / transformers: {summary['speedup_vllm_over_transformers']:.1f}x; identical generations "
          f"{same:.0%}; mean |reward difference| {diff:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
