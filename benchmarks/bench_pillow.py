"""PILLOW's headline table: LoRA vs LoRA + matched prompts vs full fine-tuning, on one set of queries.

    python benchmarks/bench_pillow.py --data PATH|t0|builtin [--test-size N] [--max-new-tokens 24] \
        [--out benchmarks/results/pillow/NAME]

On the same pool / train / test queries it builds these rows, every one scored by ``PillowReward``
on the same test queries and compared with *LoRA zero-shot* (paired, 95% bootstrap interval):

- base model: zero-shot, kNN prompts, learned prompts (``listwise`` trained on the base model);
- LoRA: zero-shot, kNN prompts, learned prompts trained against the LoRA model (= PILLOW). The
  prompt-loss weight is chosen on training data only: each ``--plw`` value trains an adapter on
  the training split less a held-out slice, judged by zero-shot reward on that slice;
- SFT: every weight fine-tuned on the same training data with the same objective, zero-shot (the
  paper's reference).

Below the table, the paper's other claims as paired differences on the same queries: PILLOW minus
SFT, and learned minus kNN prompts (on the LoRA and on the base model).

Cost columns: trainable parameters, training wall time and peak resident memory (each training runs
as ``pillow-env train-backbone`` in its own process), and LLM calls spent on selection. The SFT
learning rate is a tenth of LoRA's (``--lr``), the usual ratio for full fine-tuning. A file (Dolly's ``databricks-dolly-15k.jsonl``, or any JSON/JSONL
``load_examples`` reads) is filtered to records whose instruction + context fit ``--max-prompt-chars``
and whose answer has at most ``--max-answer-words`` words, then split by ``--seed`` (stratified by
``category``). Writes ``OUT/results.json``, ``OUT/results.md``, ``OUT/pillow.png``, and each
bench's full results under ``OUT/bench-{base,lora,sft}/``; re-running skips finished parts.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pillow_env.backends import DEFAULT_MODEL
from pillow_env.bench import BenchConfig, run_bench
from pillow_env.data import Example, examples_fingerprint, load_examples, split_examples
from pillow_env.resources import make_engine, shared_backend
from pillow_env.stats import paired_bootstrap
from pillow_env.suite import SUITES, load_suite
from pillow_env.training import TRAINING_RECORD

ROWS = [("base", "zero_shot", "base zero-shot"), ("base", "knn", "base + kNN prompts"),
        ("base", "listwise", "base + learned prompts"), ("lora", "zero_shot", "LoRA zero-shot"),
        ("lora", "knn", "LoRA + kNN prompts"), ("lora", "listwise", "LoRA + learned prompts (PILLOW)"),
        ("sft", "zero_shot", "SFT zero-shot")]
REFERENCE = ("lora", "zero_shot")
# The paper's claims beyond "better than LoRA": PILLOW close to SFT, and learned prompts better than kNN's.
COMPARISONS = [(("lora", "listwise"), ("sft", "zero_shot")), (("lora", "listwise"), ("lora", "knn")),
               (("base", "listwise"), ("base", "knn"))]


def split_data(args: argparse.Namespace) -> tuple[list[Example], list[Example], list[Example]]:
    """Pool / train / test: a built-in suite's parts, or a filtered, seeded split of a file."""
    if args.data in SUITES:
        suite = load_suite(args.data, args.seed)
        parts = suite.pool, suite.train, suite.test
        sizes = (args.pool_size, args.train_size, args.test_size)
        return tuple(list(part[:n] if n else part) for part, n in zip(parts, sizes))  # type: ignore[return-value]
    records = [e for e in load_examples(args.data)
               if len(e.instruction) + len(e.input) <= args.max_prompt_chars
               and 0 < len(e.output.split()) <= args.max_answer_words]
    sizes = (args.pool_size or 64, args.train_size or 256, args.test_size or 128)
    if sum(sizes) > len(records):
        raise SystemExit(f"--data {args.data}: {len(records)} records pass the filters, {sum(sizes)} needed")
    random.Random(args.seed).shuffle(records)
    pool, train, test = split_examples(records, sizes, seed=args.seed)
    return pool, train, test


def _write(path: Path, examples: list[Example]) -> str:
    path.write_text("".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples))
    return str(path)


def choose_plw(args: argparse.Namespace, files: dict[str, str], train: list[Example], out: Path
               ) -> tuple[float, dict[str, float]]:
    """Each PLW value trains on the training split less its last ``--dev-size`` queries, judged by
    zero-shot reward on those (training data only: the test split is not touched)."""
    if not 0 < args.dev_size < len(train):
        raise SystemExit(f"--dev-size must be between 1 and the training size less one ({len(train) - 1}), "
                         f"got {args.dev_size}")
    fit, dev = train[:-args.dev_size], train[-args.dev_size:]
    fit_file = _write(out / "data" / "train-less-dev.jsonl", fit)
    scores: dict[str, float] = {}
    for plw in args.plw:
        folder = train_backbone("lora", args, plw, args.lora_steps, fit_file, out / "plw-selection" / f"plw-{plw:g}")
        engine = make_engine(shared_backend(args.model, str(folder)), max_new_tokens=args.max_new_tokens,
                             cache_path=out / "cache.sqlite")
        scores[f"{plw:g}"] = float(sum(r.reward for r in engine.score([([], q) for q in dev])) / len(dev))
        print(f"PLW {plw:g}: zero-shot reward {scores[f'{plw:g}']:.3f} on {len(dev)} held-out training queries")
    return max(args.plw, key=lambda p: scores[f"{p:g}"]), scores


def train_backbone(kind: str, args: argparse.Namespace, plw: float, steps: int, data: str, folder: Path) -> Path:
    """``pillow-env train-backbone`` in its own process (so its peak memory is its own), once per
    setting: a folder trained with other settings is refused, not reused."""
    lr = args.lr if kind == "lora" else args.lr / 10
    settings = {"kind": kind, "model": args.model, "plw": plw, "steps": steps, "lr": lr,
                "batch_size": args.batch_size, "lora_r": args.lora_r, "seed": args.seed,
                "data": examples_fingerprint(load_examples(data))}
    cost_file = folder / "cost.json"
    if cost_file.is_file():
        cost = json.loads(cost_file.read_text())
        if cost["settings"] != settings:
            raise SystemExit(f"{folder} was trained with other settings ({cost['settings']}); use another --out")
        return folder
    command = [sys.executable, "-m", "pillow_env.cli", "train-backbone", "--data", data, "--model", args.model,
               "--plw", str(plw), "--max-steps", str(steps), "--lr", str(lr), "--batch-size", str(args.batch_size),
               "--lora-r", str(args.lora_r), "--seed", str(args.seed), "--out", str(folder),
               *(["--full"] if kind == "sft" else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    record = json.loads((folder / TRAINING_RECORD).read_text())
    cost = {"trainable_parameters": record["trainable_parameters"], "train_seconds": seconds,
            "peak_rss_mb": record["process_peak_rss_mb"], "steps": record["steps"], "settings": settings}
    cost_file.write_text(json.dumps(cost, indent=2))
    return folder


def compare(results: dict[str, Any], a: tuple[str, str], b: tuple[str, str]) -> dict[str, float]:
    """Row ``a`` minus row ``b`` on the same test queries: mean and 95% paired bootstrap interval."""
    def per_query(kind: str, agent: str) -> dict[int, float]:
        return {q["query_index"]: q["reward"] for q in results[kind]["agents"][agent]["per_query"]}

    first, second = per_query(*a), per_query(*b)
    return paired_bootstrap([first[q] - second[q] for q in first])


def table(rows: list[dict[str, Any]], settings: dict[str, Any], comparisons: list[dict[str, Any]]) -> str:
    lines = [f"Model `{settings['model']}`, {settings['shots']} shots, {settings['test']} test queries, "
             f"max_new_tokens {settings['max_new_tokens']}, PLW {settings['plw']:g} (chosen on training data), "
             f"seed {settings['seed']}.", "",
             "| setting | reward | vs LoRA zero-shot [95% paired CI] | ROUGE-L | semantic | exact match | "
             "trainable parameters | training s | peak RSS MB | selection LLM calls |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["paired"]
        paired = "-" if d is None else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        cost = r["cost"]
        params = f"{cost['trainable_parameters']:,}" if cost else "0"
        seconds = f"{cost['train_seconds']:.0f}" if cost else "0"
        memory = f"{cost['peak_rss_mb']:.0f}" if cost else "-"
        lines.append(f"| {r['setting']} | {r['reward']:.3f} | {paired} | {r['rouge_l']:.3f} | {r['semantic']:.3f} | "
                     f"{r['exact_match']:.3f} | {params} | {seconds} | {memory} | {r['selection_calls']} |")
    lines += ["", "| comparison | difference [95% paired CI] |", "|---|---|"]
    for c in comparisons:
        d = c["paired"]
        lines.append(f"| {c['a']} - {c['b']} | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = [r["setting"] for r in rows]
    ax.barh(names, [r["reward"] for r in rows], color=["C0" if r["paired"] else "C1" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("reward (0.5 ROUGE-L + 0.5 MiniLM cosine), same test queries")
    ax.set_title("PILLOW: LoRA vs LoRA + matched prompts vs SFT")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset file (e.g. databricks-dolly-15k.jsonl) or a "
                                                      "built-in suite: builtin, t0")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--pool-size", type=int, default=0, help="0: the suite's own (a file: 64)")
    parser.add_argument("--train-size", type=int, default=0, help="0: the suite's own (a file: 256)")
    parser.add_argument("--test-size", type=int, default=0, help="0: the suite's own (a file: 128)")
    parser.add_argument("--dev-size", type=int, default=48, help="held-out training queries that choose the PLW")
    parser.add_argument("--max-prompt-chars", type=int, default=600, help="file data: instruction + context length")
    parser.add_argument("--max-answer-words", type=int, default=40, help="file data: answer length")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--plw", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 0.01, 0.1],
                        help="prompt-loss weights to choose from (comma-separated)")
    parser.add_argument("--lora-steps", type=int, default=60)
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate (SFT uses a tenth of it)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=2000, help="LLM calls each listwise learner may spend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pillow/run"))
    args = parser.parse_args(argv)
    out = args.out
    (out / "data").mkdir(parents=True, exist_ok=True)
    pool, train_set, test = split_data(args)
    files = {name: _write(out / "data" / f"{name}.jsonl", part)
             for name, part in (("pool", pool), ("train", train_set), ("test", test))}
    plw, plw_scores = choose_plw(args, files, train_set, out)
    costs: dict[str, Any] = {"base": None}
    for kind, steps in (("lora", args.lora_steps), ("sft", args.sft_steps)):
        folder = train_backbone(kind, args, plw, steps, files["train"], out / kind)
        costs[kind] = json.loads((folder / "cost.json").read_text())

    models = {"base": (args.model, None), "lora": (args.model, str(out / "lora")), "sft": (str(out / "sft"), None)}
    results = {}
    for kind, (model, adapter) in models.items():
        agents = ["zero_shot"] if kind == "sft" else ["zero_shot", "knn", "listwise"]
        results[kind] = run_bench(BenchConfig(pool=files["pool"], train=files["train"], test=files["test"],
                                              agents=agents, model=model, adapter=adapter, episodes=args.episodes,
                                              seed=args.seed, out=str(out / f"bench-{kind}"),
                                              cache=str(out / "cache.sqlite"), max_new_tokens=args.max_new_tokens,
                                              train_reward="loglik"))
    rows = []
    for kind, agent, setting in ROWS:
        record = results[kind]["agents"][agent]
        rows.append({"setting": setting, "model": kind, "agent": agent,
                     **{k: record[k] for k in ("reward", "rouge_l", "semantic", "exact_match")},
                     "paired": None if (kind, agent) == REFERENCE else compare(results, (kind, agent), REFERENCE),
                     "cost": costs[kind], "selection_calls": record["train_llm_calls"]})
    settings = {"data": args.data, "model": args.model, "shots": 2, "test": len(test), "pool": len(pool),
                "train": len(train_set), "max_new_tokens": args.max_new_tokens, "plw": plw,
                "plw_scores": plw_scores, "seed": args.seed, "lora_steps": args.lora_steps,
                "sft_steps": args.sft_steps, "episodes": args.episodes}
    names = {(kind, agent): setting for kind, agent, setting in ROWS}
    comparisons = [{"a": names[a], "b": names[b], "paired": compare(results, a, b)} for a, b in COMPARISONS]
    summary = {"settings": settings, "rows": rows, "comparisons": comparisons}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(table(rows, settings, comparisons))
    plot(rows, out / "pillow.png")
    print(table(rows, settings, comparisons))
    return summary


if __name__ == "__main__":
    main()
