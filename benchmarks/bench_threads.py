"""Generations per second with torch's default threads vs ``threads=N``, alone and beside a busy process.

On a small machine a second CPU-bound process (another training run, a test suite) makes torch's
default one-thread-per-core setting spin threads against each other; giving each process its
share of the cores (``threads=`` / ``--threads``) avoids it. This measures the four cases on the
same 2-shot kNN prompts, one run. Usage: ``python benchmarks/bench_threads.py [--generations 8]``;
writes ``benchmarks/results/threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from agents import make_agent
from pillow_env.encoder import load_encoder
from pillow_env.env import PillowMatchEnv
from pillow_env.resources import shared_backend
from pillow_env.suite import builtin_suite

BUSY = "import numpy as np\na = np.random.rand(400, 400)\nwhile True:\n    a = a @ a; a /= a.max()\n"


def rate(backend, prompts: list[str]) -> float:
    start = time.perf_counter()
    for prompt in prompts:  # one at a time: the latency a single env sees
        backend.generate([prompt], 24)
    return len(prompts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "threads.json")
    args = parser.parse_args()
    suite = builtin_suite(0)
    env = PillowMatchEnv(suite.pool, suite.test[:args.generations], encoder=load_encoder("minilm"))
    backend = shared_backend("smollm2-135m-instruct")
    prompts = [backend.renderer.render([suite.pool[i] for i in sel], q) for q, sel in
               zip(env.queries, make_agent("knn").select_many(env, list(range(len(env.queries)))))]
    default = torch.get_num_threads()
    rows = {}
    for busy in (False, True):
        other = subprocess.Popen([sys.executable, "-c", BUSY], env={**os.environ, "OMP_NUM_THREADS": "1"}) \
            if busy else None
        try:
            for threads in sorted({default, max(1, default - 1)}, reverse=True):
                torch.set_num_threads(threads)
                backend.generate(prompts[:1], 4)  # warm-up at this setting
                key = f"{'busy' if busy else 'idle'}, threads={threads}"
                rows[key] = rate(backend, prompts)
                print(f"{key}: {rows[key]:.2f} generations/s")
        finally:
            if other is not None:
                other.kill()
                other.wait()
    torch.set_num_threads(default)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": os.cpu_count(), "default_threads": default,
                                    "generations_per_second": rows}, indent=2))


if __name__ == "__main__":
    main()
