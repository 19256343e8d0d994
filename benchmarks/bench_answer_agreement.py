"""Answer agreement: where the selectors' gains and losses over kNN sit, from committed runs (no LLM call).

Why: much of an oracle's headroom, and of a learner's gain, can come from exemplars whose answer
equals the reference's ("answer agreement"), which a selector can only infer from the query. Before
building a learner (issue 32) this re-derives, from the committed benchmark runs, how often each
agent's test selections hold such an exemplar and what that is worth; listwise's gain over kNN split
into gained / lost / both / neither such an exemplar; per template, how many distinct answers the
pool holds and whether a same-answer entry is among the 8 nearest; whether the model copies the
last (nearest) or the first exemplar's answer; kNN's same- vs different-answer pairs; and, on the
PAWS templates' *training* queries, which labels listwise's and kNN's exemplars carry. Answers are
compared after lower-casing and collapsing spaces. Only the MiniLM encoder runs (for the nearest
entries and the training-query selections).

Usage: ``python benchmarks/bench_answer_agreement.py`` (writes ``results/answer-agreement.json``).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

RESULTS = Path(__file__).parent / "results"
RUNS = {"t0": RESULTS / "bench-t0" / "results.json", "builtin": RESULTS / "bench-swap" / "results.json"}
LISTWISE_T0 = RESULTS / "bench-t0" / "agents" / "listwise"
FEW_ANSWERS = 4  # a template with at most this many distinct answers in the pool is "few-answer"
NEAREST = 8
PAWS = "paws_"
CELLS = ("gained", "lost", "both", "neither")


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def answers(selection: Sequence[int], pool: Sequence[Any]) -> list[str]:
    return [norm(pool[i].output) for i in selection]


def holds(record: dict, pool: Sequence[Any]) -> bool:
    """Does the selection hold an exemplar whose answer equals the reference's?"""
    return norm(record["reference"]) in answers(record["selection"], pool)


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def agreement(records: Sequence[dict], pool: Sequence[Any]) -> dict[str, Any]:
    """Share of selections holding a reference-answer exemplar; mean reward with and without one."""
    split: dict[bool, list[float]] = {True: [], False: []}
    for r in records:
        split[holds(r, pool)].append(r["reward"])
    return {"n": len(records), "share": len(split[True]) / len(records),
            "reward_with": mean(split[True]), "reward_without": mean(split[False])}


def gain_cells(base: Sequence[dict], other: Sequence[dict], pool: Sequence[Any]) -> dict[str, dict]:
    """``other - base`` per query (records aligned by query), split by which side holds a
    reference-answer exemplar: gained (other only), lost (base only), both, neither."""
    cells = {c: {"n": 0, "reward_diff": 0.0} for c in CELLS}
    for b, o in zip(base, other, strict=True):
        hb, ho = holds(b, pool), holds(o, pool)
        cell = cells["both" if hb and ho else "gained" if ho else "lost" if hb else "neither"]
        cell["n"] += 1
        cell["reward_diff"] += o["reward"] - b["reward"]
    return cells


def copied(record: dict, pool: Sequence[Any]) -> str:
    """Which exemplar's answer the generation repeats: last (next to the query), first, both (the two
    carry the same answer), or neither."""
    first, *_, last = answers(record["selection"], pool)
    gen = norm(record["generation"])
    if gen == first == last:
        return "both"
    return "last" if gen == last else "first" if gen == first else "neither"


def shares(labels: Sequence[str]) -> dict[str, float]:
    return {k: v / len(labels) for k, v in sorted(Counter(labels).items())}


def kinds_of(pool: Sequence[Any]) -> tuple[dict[str, int], dict[str, str]]:
    """Distinct (normalised) answers per template in the pool, and each template's kind."""
    distinct = {t: len(a) for t, a in _group(pool, lambda e: norm(e.output)).items()}
    return distinct, {t: "few" if n <= FEW_ANSWERS else "open" for t, n in distinct.items()}


def _group(examples: Sequence[Any], value) -> dict[str, set]:
    out: dict[str, set] = defaultdict(set)
    for e in examples:
        out[e.task].add(value(e))
    return out


def near_same_answer(queries: Sequence[Any], pool: Sequence[Any], encoder) -> list[bool]:
    """Is a pool entry with the query's answer among its ``NEAREST`` nearest (query-side cosine, as kNN)?"""
    from pillow_env.resources import embed_examples

    keys = embed_examples(encoder, pool, with_output=False)
    sim = embed_examples(encoder, queries, with_output=False) @ keys.T
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :NEAREST]
    return [norm(q.output) in answers(row, pool) for q, row in zip(queries, nearest)]


def aligned(run: dict, path: Path, queries: Sequence[Any], pool: Sequence[Any]) -> dict[str, list[dict]]:
    """Each agent's per-query records in suite order, checked against the suite's texts."""
    out = {}
    for name, agent in run["agents"].items():
        records = sorted(agent["per_query"], key=lambda r: r["query_index"])
        if [r["query_index"] for r in records] != list(range(len(queries))):
            raise ValueError(f"{path}: agents.{name}.per_query does not cover the {len(queries)} test "
                             "queries once each")
        for r in records:
            q = queries[r["query_index"]]
            shown = [f"{pool[i].instruction} | {pool[i].input}" for i in r["selection"]]
            expected = (q.instruction, q.input, q.output, shown)
            if (r["query"], r["input"], r["reference"], r["exemplars"]) != expected:
                raise ValueError(f"{path}: agents.{name}.per_query query_index {r['query_index']} "
                                 "does not match the suite")
        out[name] = records
    return out


def analyse_run(path: Path, suite: str, encoder) -> dict[str, Any]:
    """Every test-split figure for one committed run of a built-in suite."""
    from pillow_env.data import resolve_examples

    pool = resolve_examples(suite, "pool")
    queries = resolve_examples(suite, "test", what="queries")
    runs = aligned(json.loads(path.read_text()), path, queries, pool)
    knn, listwise = runs["knn"], runs["listwise"]
    distinct, kind = kinds_of(pool)
    near = near_same_answer(queries, pool, encoder)
    diff = [o["reward"] - b["reward"] for b, o in zip(knn, listwise)]
    chosen = {n: r for n, r in runs.items() if r[0]["selection"]}  # agents that show exemplars
    templates = {}
    for t in sorted(distinct):
        idx = [i for i, q in enumerate(queries) if q.task == t]
        templates[t] = {"kind": kind[t], "distinct_answers": distinct[t], "n": len(idx),
                        "same_answer_near": float(np.mean([near[i] for i in idx])),
                        "knn_holds": float(np.mean([holds(knn[i], pool) for i in idx])),
                        "listwise_holds": float(np.mean([holds(listwise[i], pool) for i in idx])),
                        "listwise_minus_knn": float(np.mean([diff[i] for i in idx]))}
    by_kind = {k: [i for i, q in enumerate(queries) if kind[q.task] == k] for k in ("few", "open")}
    paws = [i for i, q in enumerate(queries) if q.task.startswith(PAWS)]
    groups = {**by_kind, **({"paws": paws} if paws else {})}
    pairs = {k: {label: {"n": len(rw), "reward": mean(rw)} for label, rw in (
        ("same", [knn[i]["reward"] for i in ix if len(set(answers(knn[i]["selection"], pool))) == 1]),
        ("different", [knn[i]["reward"] for i in ix if len(set(answers(knn[i]["selection"], pool))) > 1]))}
        for k, ix in by_kind.items()}
    return {
        "source": str(path.relative_to(RESULTS.parent.parent)), "queries": len(queries),
        "agreement": {n: agreement(r, pool) for n, r in runs.items()},
        "cells_vs_knn": {n: gain_cells(knn, r, pool) for n, r in runs.items() if n != "knn"},
        "kinds": {k: {"templates": len({queries[i].task for i in ix}), "queries": len(ix),
                      "listwise_minus_knn_sum": float(sum(diff[i] for i in ix)),
                      "cells": gain_cells([knn[i] for i in ix], [listwise[i] for i in ix], pool)}
                  for k, ix in groups.items()},
        "templates": templates,
        "copies": {n: {k: shares([copied(r[i], pool) for i in ix]) for k, ix in groups.items()}
                   for n, r in chosen.items()},
        "knn_pairs": pairs,
        **({"paws_sets": {n: paws_sets(runs[n], queries, pool) for n in ("knn", "listwise")}}
           if paws else {}),
    }


def label_set(selection: Sequence[int], reference: str, pool: Sequence[Any], labels: set[str]) -> str:
    """What a selection shows of a few-answer template's labels: an answer from another template,
    one label twice (the reference's or not), or both labels."""
    shown = answers(selection, pool)
    if not set(shown) <= labels:
        return "off-template"
    if len(set(shown)) > 1:
        return "two labels"
    return "one label = reference" if shown[0] == norm(reference) else "one label != reference"


def paws_sets(records: Sequence[dict], queries: Sequence[Any], pool: Sequence[Any]) -> dict[str, dict]:
    """Per label-set kind (:func:`label_set`) on the PAWS queries: count and mean reward."""
    labels = _group(pool, lambda e: norm(e.output))
    rewards: dict[str, list[float]] = defaultdict(list)
    for r in records:
        q = queries[r["query_index"]]
        if q.task.startswith(PAWS):
            rewards[label_set(r["selection"], q.output, pool, labels[q.task])].append(r["reward"])
    return {k: {"n": len(v), "reward": mean(v)} for k, v in sorted(rewards.items())}


def paws_train_labels(encoder) -> dict[str, Any]:
    """On t0's training queries of the PAWS templates: the label sets listwise's and kNN's exemplars
    show (:func:`label_set`), and how often the last or any exemplar carries the reference's label."""
    import gymnasium

    import pillow_env  # noqa: F401  (registers PillowMatch-v0)
    from agents import KNNAgent, load_agent

    env = gymnasium.make("PillowMatch-v0", pool="t0", queries="t0", split="train", encoder=encoder).unwrapped
    labels = _group(env.pool, lambda e: norm(e.output))
    idx = [i for i, q in enumerate(env.queries) if q.task.startswith(PAWS)]
    out: dict[str, Any] = {"queries": len(idx)}
    for name, agent in (("knn", KNNAgent()), ("listwise", load_agent(LISTWISE_T0))):
        agent.prepare(env)
        rows: dict[str, dict] = defaultdict(lambda: {"n": 0, "last_is_reference": 0, "any_is_reference": 0,
                                                     "sets": Counter()})
        for i, sel in zip(idx, agent.select_many(env, idx)):
            q, shown = env.queries[i], answers(sel, env.pool)
            row = rows[q.task]
            row["n"] += 1
            row["last_is_reference"] += shown[-1] == norm(q.output)
            row["any_is_reference"] += norm(q.output) in shown
            row["sets"][label_set(sel, q.output, env.pool, labels[q.task])] += 1
        out[name] = {t: {**row, "sets": dict(sorted(row["sets"].items()))} for t, row in sorted(rows.items())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "answer-agreement.json")
    args = parser.parse_args()
    from pillow_env.encoder import load_encoder

    encoder = load_encoder("minilm")
    report = {suite: analyse_run(path, suite, encoder) for suite, path in RUNS.items()}
    report["paws_train"] = paws_train_labels(encoder)
    report["headroom"] = ("benchmarks/results/headroom-t0.json and headroom.json hold only aggregate rows "
                          "(no per-query sets or rewards): the oracle's and the likelihood-best set's gains "
                          "cannot be split by answer agreement from them")
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
