"""Episodes per second of the same bench slice in process and through a local OpenAI-compatible server.

Starts ``transformers serve`` on 127.0.0.1 with the converted SmolLM2 folder (stopped by its pid at
the end), then scores the same 2-shot episodes (kNN and random exemplars for the first ``--queries``
held-out queries) through fresh, cache-less engines: transformers in process, and the server
through ``openai:URL#MODEL`` (and vLLM in process when it is installed and a GPU is present).
Prints and writes episodes/s, the ratios to in process, and the share of identical generations.

Usage: ``python benchmarks/bench_backends.py [--queries 32]``; writes ``benchmarks/results/backends.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from agents import make_agent
from pillow_env.backends import DEFAULT_MODEL
from pillow_env.backends import load_backend
from pillow_env.backends.hf import resolve_model
from pillow_env.backends.local_server import LocalServer
from pillow_env.encoder import load_encoder
from pillow_env.resources import make_engine
from pillow_env.env import PillowMatchEnv
from pillow_env.suite import builtin_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backends.json")
    args = parser.parse_args()
    suite = builtin_suite(0)
    encoder = load_encoder("minilm")
    env = PillowMatchEnv(suite.pool, suite.test[:args.queries], encoder=encoder)
    indices = list(range(len(env.queries)))
    requests = [([suite.pool[i] for i in sel], env.queries[q]) for name in ("knn", "random")
                for q, sel in zip(indices, make_agent(name).select_many(env, indices))]

    server = LocalServer(resolve_model(args.model), log=args.out.with_suffix(".server.log"))
    try:
        specs = [args.model, server.spec]
        try:
            import vllm  # noqa: F401
            import torch

            if torch.cuda.is_available():
                specs.append(f"vllm:{args.model}")
        except ImportError:
            pass
        rows = {}
        for spec in specs:
            backend = load_backend(spec)
            engine = make_engine(backend, encoder, batch_size=16)
            start = time.perf_counter()
            scored = engine.score(requests)
            seconds = time.perf_counter() - start
            rows[spec] = {"episodes_per_second": len(requests) / seconds, "seconds": seconds,
                          "generations": [s.generation for s in scored]}
            print(f"{spec}: {len(requests)} episodes in {seconds:.1f} s = {len(requests) / seconds:.2f}/s")
    finally:
        server.stop()
    base = rows[args.model]
    for spec, row in rows.items():
        row["ratio_to_in_process"] = row["episodes_per_second"] / base["episodes_per_second"]
        same = sum(a == b for a, b in zip(row["generations"], base["generations"]))
        row["identical_generations"] = same / len(requests)
        print(f"{spec}: {row['ratio_to_in_process']:.2f}x in process, identical generations "
              f"{row['identical_generations']:.0%}")
    for row in rows.values():
        del row["generations"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"episodes": len(requests), "backends": rows, "platform": platform.platform(),
                                    "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
