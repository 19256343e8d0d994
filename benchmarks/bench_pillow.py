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
bench's full results under ``OUT/bench-{base,lora,sft}/``; re-running skips finished parts. Every
input is checked before anything is written (a folder holding other data is refused untouched), and
one run at a time holds ``OUT`` (see :func:`pillow_env.outputs.claim_folder`).
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
from pillow_env.outputs import Interrupted, claim_folder, write_json, write_text
from pillow_env.resources import make_engine, shared_backend
from pillow_env.stats import paired_bootstrap
from pillow_env.suite import SUITES, load_suite, suite_max_new_tokens
from pillow_env.training import TRAINING_RECORD

ROWS = [("base", "zero_shot", "base zero-shot"), ("base", "knn", "base + kNN prompts"),
        ("base", "listwise", "base + learned prompts"), ("lora", "zero_shot", "LoRA zero-shot"),
        ("lora", "knn", "LoRA + kNN prompts"), ("lora", "listwise", "LoRA + learned prompts (PILLOW)"),
        ("sft", "zero_shot", "SFT zero-shot")]
REFERENCE = ("lora", "zero_shot")
# The paper's claims beyond "better than LoRA": PILLOW close to SFT, and learned prompts better than kNN's.
COMPARISONS = [(("lora", "listwise"), ("sft", "zero_shot")), (("lora", "listwise"), ("lora", "knn")),
               (("base", "listwise"), ("base", "knn"))]


FILE_SIZES = (64, 256, 128)  # pool / train / test from a file, unless given


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def split_data(args: argparse.Namespace) -> tuple[list[Example], list[Example], list[Example]]:
    """Pool / train / test: a built-in suite's parts, or a filtered, seeded split of a file. A size
    larger than what there is is refused, naming the option."""
    sizes = {"--pool-size": args.pool_size, "--train-size": args.train_size, "--test-size": args.test_size}
    if args.data in SUITES:
        suite = load_suite(args.data, args.seed)
        parts = {"--pool-size": suite.pool, "--train-size": suite.train, "--test-size": suite.test}
        for flag, n in sizes.items():
            if n is not None and n > len(parts[flag]):
                raise SystemExit(f"{flag} {n}: the {args.data} suite's {flag[2:-5]} part holds only "
                                 f"{len(parts[flag])} examples")
        return tuple(list(part if sizes[flag] is None else part[:sizes[flag]])  # type: ignore[return-value]
                     for flag, part in parts.items())
    records = [e for e in load_examples(args.data)
               if len(e.instruction) + len(e.input) <= args.max_prompt_chars
               and 0 < len(e.output.split()) <= args.max_answer_words]
    counts = [n or default for n, default in zip(sizes.values(), FILE_SIZES)]
    if sum(counts) > len(records):
        raise SystemExit(f"--data {args.data}: {len(records)} records pass the filters; --pool-size + --train-size "
                         f"+ --test-size = {' + '.join(map(str, counts))} = {sum(counts)} needed")
    random.Random(args.seed).shuffle(records)
    pool, train, test = split_examples(records, counts, seed=args.seed)
    return pool, train, test


def _jsonl(examples: list[Example]) -> str:
    return "".join(json.dumps(e.to_dict(), ensure_ascii=False, allow_nan=False) + "\n" for e in examples)


def write_data(out: Path, parts: dict[str, list[Example]]) -> dict[str, str]:
    """``OUT/data/NAME.jsonl`` for each part, after checking that none already there holds other data (an
    earlier run with another --data, --seed, size or --dev-size): then nothing is written at all."""
    texts = {name: _jsonl(part) for name, part in parts.items()}
    paths = {name: out / "data" / f"{name}.jsonl" for name in parts}
    for name, path in paths.items():
        if path.is_file() and path.read_text(encoding="utf-8") != texts[name]:
            raise SystemExit(f"{path} holds other data (an earlier run with another --data, --seed, size or "
                             "--dev-size); use another --out (nothing was written)")
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        write_text(path, texts[name])
    return {name: str(path) for name, path in paths.items()}


def dev_split(args: argparse.Namespace, train: list[Example]) -> tuple[list[Example], list[Example]]:
    """The training split less its last ``--dev-size`` queries, and those (they choose the PLW)."""
    if not 0 < args.dev_size < len(train):
        raise SystemExit(f"--dev-size must be between 1 and the training size less one ({len(train) - 1}), "
                         f"got {args.dev_size}")
    return train[:-args.dev_size], train[-args.dev_size:]


def choose_plw(args: argparse.Namespace, files: dict[str, str], train: list[Example], out: Path
               ) -> tuple[float, dict[str, float]]:
    """Each PLW value trains on the training split less its last ``--dev-size`` queries, judged by
    zero-shot reward on those (training data only: the test split is not touched)."""
    _, dev = dev_split(args, train)
    fit_file = files["train-less-dev"]
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
    write_json(cost_file, cost)
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
                                                      "built-in suite: builtin, t0, selfinstruct")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--pool-size", type=_positive, default=None, help="default: the suite's own (a file: 64)")
    parser.add_argument("--train-size", type=_positive, default=None, help="default: the suite's own (a file: 256)")
    parser.add_argument("--test-size", type=_positive, default=None, help="default: the suite's own (a file: 128)")
    parser.add_argument("--dev-size", type=_positive, default=48, help="held-out training queries that choose the PLW")
    parser.add_argument("--max-prompt-chars", type=_positive, default=600,
                        help="file data: instruction + context length")
    parser.add_argument("--max-answer-words", type=_positive, default=40, help="file data: answer length")
    parser.add_argument("--max-new-tokens", type=_positive, default=None,
                        help="default: the suite's (selfinstruct: 128), else 24")
    parser.add_argument("--plw", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 0.01, 0.1],
                        help="prompt-loss weights to choose from (comma-separated)")
    parser.add_argument("--lora-steps", type=_positive, default=60)
    parser.add_argument("--sft-steps", type=_positive, default=60)
    parser.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate (SFT uses a tenth of it)")
    parser.add_argument("--batch-size", type=_positive, default=8)
    parser.add_argument("--lora-r", type=_positive, default=8)
    parser.add_argument("--episodes", type=_positive, default=2000, help="LLM calls each listwise learner may spend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pillow/run"))
    args = parser.parse_args(argv)
    if args.max_new_tokens is None:
        args.max_new_tokens = suite_max_new_tokens(args.data) or 24
    out = args.out
    # Every input is checked before anything is written; then one run at a time holds OUT.
    pool, train_set, test = split_data(args)
    fit, _ = dev_split(args, train_set)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file, not a folder")
    try:
        with claim_folder(out):
            return _run(args, out, pool, train_set, test, fit)
    except ValueError as err:  # a refused --out (in use, unwritable), a refused resume in a bench folder
        raise SystemExit(f"bench_pillow: error: {err}") from None
    except KeyboardInterrupt as err:  # one line, the shell's exit code for SIGINT
        kept = f"{err.kept}, and" if isinstance(err, Interrupted) else ""
        print(f"bench_pillow: interrupted: kept {kept} every finished part under {out} (skipped on a rerun)",
              file=sys.stderr)
        raise SystemExit(130) from None


def _run(args: argparse.Namespace, out: Path, pool: list[Example], train_set: list[Example], test: list[Example],
         fit: list[Example]) -> dict[str, Any]:
    files = write_data(out, {"pool": pool, "train": train_set, "test": test, "train-less-dev": fit})
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
    write_json(out / "results.json", summary)
    write_text(out / "results.md", table(rows, settings, comparisons))
    plot(rows, out / "pillow.png")
    print(table(rows, settings, comparisons))
    return summary


if __name__ == "__main__":
    main()
