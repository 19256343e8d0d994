"""Selections per second of saved agents on new queries, against the cost of one LLM generation.

A :class:`~agents.selector.Selector` embeds each new query (MiniLM), lets the agent choose its
exemplars and renders the prompt with the model's chat template; no LLM is loaded. This times that
end to end on ``--queries`` new instructions (built-in task families, fresh items from other suite
seeds) against the built-in pool, for kNN and for the matching-network agents (REINFORCE and
listwise: the network's cost does not depend on its training, so an untrained one is timed), then
times ``--generations`` greedy 2-shot generations of the real LLM in the same run for the ratio.

It also times a selector's start in a new process (``--startup``, on ``t0`` by default): building
``Selector(make_agent("knn"), pool=...)`` and its first selection, once with an empty embedding cache
and once with the cache the first process left (pool embeddings on disk, keyed by encoder weights
and pool content), each in a fresh interpreter (imports not counted; the encoder's and tokenizer's
loads timed apart, as the cache cannot shorten them).

Usage: ``python benchmarks/bench_select.py [--queries 10000]`` or ``--startup-only``; writes
``benchmarks/results/select.json`` (``select-startup.json`` with ``--startup-only``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agents import make_agent
from agents.selector import Selector
from pillow_env.encoder import load_encoder
from pillow_env.env import PillowMatchEnv
from pillow_env.resources import DEFAULT_MODEL, forget_embeddings, make_engine, shared_backend
from pillow_env.suite import builtin_suite


def new_queries(n: int) -> list:
    """``n`` instructions the pool has not seen: the queries of suites with other seeds."""
    out, seed = [], 1
    while len(out) < n:
        suite = builtin_suite(seed)
        out += suite.train + suite.test
        seed += 1
    return out[:n]


STARTUP = """
import json, sys, time
from agents import make_agent
from agents.selector import Selector, load_renderer
from pillow_env.encoder import load_encoder
from pillow_env.resources import DEFAULT_MODEL
start = time.perf_counter()
encoder, renderer = load_encoder("minilm"), load_renderer(DEFAULT_MODEL)
loads = time.perf_counter() - start
selector = Selector(make_agent("knn"), pool=sys.argv[1], encoder=encoder, renderer=renderer)
built = time.perf_counter() - start - loads
selector.select(["Reverse the letters of this word: garden", "Name the capital of Peru."])
print(json.dumps({"encoder_and_tokenizer_seconds": loads, "pool_seconds": built,
                  "first_select_seconds": time.perf_counter() - start - loads - built}))
"""


def startup(pool: str) -> dict:
    """Seconds to build a kNN selector on ``pool`` and select twice, in a new process with no
    embedding cache, then in another one with the cache the first left (a temporary PILLOW_ENV_CACHE,
    its converted models linked from the real one so only embeddings start cold)."""
    from pillow_env.backends.hf import cache_dir

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if (cache_dir() / "models").is_dir():
            os.symlink(cache_dir() / "models", Path(tmp) / "models")
        env = {**os.environ, "PILLOW_ENV_CACHE": tmp}
        for run in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", STARTUP, pool], env=env, capture_output=True, text=True,
                                 check=True)
            runs[run] = json.loads(out.stdout.strip().splitlines()[-1])
            r = runs[run]
            r["total_seconds"] = r["encoder_and_tokenizer_seconds"] + r["pool_seconds"] + r["first_select_seconds"]
            print(f"{pool} selector start, {run} embedding cache: encoder + tokenizer "
                  f"{r['encoder_and_tokenizer_seconds']:.1f} s, pool {r['pool_seconds']:.1f} s, first select "
                  f"{r['first_select_seconds']:.1f} s")
    runs["speedup"] = runs["cold"]["total_seconds"] / runs["warm"]["total_seconds"]
    runs["speedup_excluding_model_loads"] = ((runs["cold"]["pool_seconds"] + runs["cold"]["first_select_seconds"])
                                             / (runs["warm"]["pool_seconds"] + runs["warm"]["first_select_seconds"]))
    print(f"the embedding cache makes a new selector's start {runs['speedup']:.1f}x faster "
          f"({runs['speedup_excluding_model_loads']:.0f}x for the pool and first select alone)")
    return {"pool": pool, **runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--generations", type=int, default=32, help="2-shot generations timed for the ratio")
    parser.add_argument("--agents", default="knn,reinforce,listwise")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "select.json")
    parser.add_argument("--startup-pool", default="t0", help="pool whose selector start is timed")
    parser.add_argument("--startup-only", action="store_true", help="time only the selector start")
    args = parser.parse_args()

    started = startup(args.startup_pool)
    if args.startup_only:
        out = args.out.with_name("select-startup.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**started, "platform": platform.platform(), "load_average": os.getloadavg()},
                                  indent=2))
        return
    pool = builtin_suite(0).pool
    queries = new_queries(args.queries)
    encoder = load_encoder("minilm")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.agents.split(","):
            agent = make_agent(name)
            agent.prepare(PillowMatchEnv(pool, pool[:1], encoder=encoder))  # networks start at kNN; same cost
            folder = agent.save(Path(tmp) / name)
            forget_embeddings()  # every agent embeds the new queries itself
            start = time.perf_counter()
            selector = Selector.load(folder, pool, model=args.model, encoder=encoder)
            load_seconds = time.perf_counter() - start
            start = time.perf_counter()
            done = 0
            for lo in range(0, len(queries), args.batch_size):
                done += len(selector.select(queries[lo:lo + args.batch_size]))
            seconds = time.perf_counter() - start
            rows[name] = {"selections": done, "seconds": seconds, "per_second": done / seconds,
                          "load_seconds": load_seconds}
            print(f"{name}: {done} selections in {seconds:.1f} s = {done / seconds:.0f}/s (load {load_seconds:.1f} s)")

    engine = make_engine(shared_backend(args.model), encoder)
    knn = Selector(make_agent("knn"), pool, model=args.model, encoder=encoder)
    requests = [(s.exemplars, s.query) for s in knn.select(queries[:args.generations])]
    start = time.perf_counter()
    engine.score(requests)
    gen_rate = args.generations / (time.perf_counter() - start)
    for row in rows.values():
        row["ratio_to_generation"] = row["per_second"] / gen_rate
    print(f"LLM: {gen_rate:.2f} generations/s (batched, greedy, 2-shot); selection is "
          + ", ".join(f"{n} {r['ratio_to_generation']:.0f}x" for n, r in rows.items()) + " faster")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"queries": len(queries), "batch_size": args.batch_size, "agents": rows,
                                    "generations_per_second": gen_rate, "model": args.model, "startup": started,
                                    "platform": platform.platform()}, indent=2))


if __name__ == "__main__":
    main()
