"""Selections per second of saved agents on new queries, against the cost of one LLM generation.

A :class:`~agents.selector.Selector` embeds each new query (MiniLM), lets the agent choose its
exemplars and renders the prompt with the model's chat template; no LLM is loaded. This times that
end to end on ``--queries`` new instructions (built-in task families, fresh items from other suite
seeds) against the built-in pool, for kNN and for the matching-network agents (REINFORCE and
listwise: the network's cost does not depend on its training, so an untrained one is timed), then
times ``--generations`` greedy 2-shot generations of the real LLM in the same run for the ratio.

Usage: ``python benchmarks/bench_select.py [--queries 10000]``; writes ``benchmarks/results/select.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--generations", type=int, default=32, help="2-shot generations timed for the ratio")
    parser.add_argument("--agents", default="knn,reinforce,listwise")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "select.json")
    args = parser.parse_args()

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
                                    "generations_per_second": gen_rate, "model": args.model,
                                    "platform": platform.platform()}, indent=2))


if __name__ == "__main__":
    main()
