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
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from agents import make_agent
from pillow_env.backends import load_backend
from pillow_env.backends.hf import resolve_model
from pillow_env.encoder import load_encoder
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.rewards import PillowReward
from pillow_env.suite import builtin_suite


def start_server(folder: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    process = subprocess.Popen([exe, "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                "--dtype", "float32"], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(1)
    os.kill(process.pid, signal.SIGKILL)
    raise RuntimeError(f"transformers serve did not become healthy; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backends.json")
    args = parser.parse_args()
    suite = builtin_suite(0)
    encoder = load_encoder("minilm")
    env = PillowMatchEnv(suite.pool, suite.test[:args.queries], encoder=encoder)
    indices = list(range(len(env.queries)))
    requests = [([suite.pool[i] for i in sel], env.queries[q]) for name in ("knn", "random")
                for q, sel in zip(indices, make_agent(name).select_many(env, indices))]

    folder = resolve_model(args.model)
    process, url = start_server(folder, args.out.with_suffix(".server.log"))
    try:
        specs = [args.model, f"openai:{url}#{folder}"]
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
            engine = RewardEngine(backend, PillowReward(encoder=encoder), batch_size=16)
            start = time.perf_counter()
            scored = engine.score(requests)
            seconds = time.perf_counter() - start
            rows[spec] = {"episodes_per_second": len(requests) / seconds, "seconds": seconds,
                          "generations": [s.generation for s in scored]}
            print(f"{spec}: {len(requests)} episodes in {seconds:.1f} s = {len(requests) / seconds:.2f}/s")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
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
