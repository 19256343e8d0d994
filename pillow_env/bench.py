"""``pillow-env bench``: train the learning agents, evaluate every agent, write JSON, Markdown and a plot.

All agents share one LLM, one reward engine and one disk cache (``OUT/cache.sqlite`` unless
``--cache``), so no answer is generated twice; every scored episode is appended to
``OUT/trajectories.jsonl``. Learners may train on the likelihood signal (``train_reward="loglik"``);
evaluation always uses the generation-based ``PillowReward``. Each agent is compared with a
reference agent (kNN by default) on the same test queries: mean difference and 95% paired
bootstrap interval. ``results.json`` is rewritten after each agent: an interrupted run keeps every
finished agent and, re-run with the same settings, skips them. ``splits=K`` runs all of that on K
seeded re-splits of a built-in suite and pools the paired differences (``pool_splits``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends import DEFAULT_MODEL
from .data import Example, examples_fingerprint, require_answers, resolve_examples

__all__ = ["BenchConfig", "run_bench", "pool_splits"]

METRICS = ("reward", "rouge_l", "semantic", "exact_match")


DEFAULT_AGENTS = ("zero_shot", "random", "knn", "reinforce", "listwise")  # `pillow-env bench` without --agents


@dataclass
class BenchConfig:
    pool: str = "builtin"
    train: str = "builtin"
    test: str = "builtin"
    agents: list[str] = field(default_factory=lambda: list(DEFAULT_AGENTS))
    shots: int = 2
    model: str = DEFAULT_MODEL
    adapter: str | None = None
    episodes: int = 1000
    seed: int = 0
    out: str = "runs/bench"
    cache: str | None = None
    num_envs: int = 16
    max_new_tokens: int = 24
    test_limit: int | None = None
    train_limit: int | None = None
    agent_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    candidates: int | None = None
    train_reward: str = "pillow"
    reference: str | None = None  # None: "knn" when it is among the agents
    splits: int = 1


def _settings(config: BenchConfig, pool: list[Example], train: list[Example], test: list[Example]) -> dict[str, Any]:
    """What results depend on; a resumed run must match it."""
    from .backends import public_spec

    return {"model": public_spec(config.model), "adapter": config.adapter, "shots": config.shots, "seed": config.seed,
            "episodes": config.episodes, "max_new_tokens": config.max_new_tokens, "num_envs": config.num_envs,
            "agent_kwargs": config.agent_kwargs, "candidates": config.candidates,
            "train_reward": config.train_reward, "pool": examples_fingerprint(pool),
            "train": examples_fingerprint(train),
            "test": examples_fingerprint(test)}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # atomic: a kill never leaves half a results file


def run_bench(config: BenchConfig, *, progress: bool = True) -> dict[str, Any]:
    from agents import AGENTS, Budget, FitRecord, evaluate, make_seeded_agent

    unknown = [a for a in [*config.agents, *config.agent_kwargs] if a not in AGENTS]
    if unknown:
        raise ValueError(f"unknown agent(s) {', '.join(unknown)}; valid agents: {', '.join(AGENTS)}")
    from .engine import TRAIN_REWARDS

    if config.train_reward not in TRAIN_REWARDS:
        raise ValueError(f"train_reward must be one of {', '.join(TRAIN_REWARDS)}, got {config.train_reward!r}")
    if config.splits > 1:
        return _run_splits(config, progress=progress)
    pool = resolve_examples(config.pool, "pool", seed=config.seed, what="--pool")
    train = resolve_examples(config.train, "train", seed=config.seed, what="--train")
    test = resolve_examples(config.test, "test", seed=config.seed, what="--test")
    for what, examples in (("--pool", pool), ("--train", train), ("--test", test)):
        require_answers(examples, what)
    if config.reference is None:
        config = replace(config, reference="knn")
    elif config.reference not in config.agents:
        raise ValueError(f"--reference {config.reference} is not among --agents ({', '.join(config.agents)}): "
                         "add it, or compare with one of them")
    if config.test_limit is not None:
        test = test[:config.test_limit]
    if config.train_limit is not None:
        train = train[:config.train_limit]
    # Everything that can be wrong is checked here, before the model loads and before any agent runs.
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    from .cache import check_cache_path

    check_cache_path(config.cache or out / "cache.sqlite")  # before --out is created: a refusal leaves nothing
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out}: cannot create the folder ({err.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} is not writable")
    results_path = out / "results.json"
    settings = _settings(config, pool, train, test)
    results: dict[str, Any] = {"settings": settings, "agents": {}}
    if results_path.exists():
        try:
            previous = json.loads(results_path.read_text(encoding="utf-8"))
            if not isinstance(previous, dict) or not isinstance(previous.get("agents"), dict):
                raise ValueError("no 'agents' table")
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{results_path} is not a results file of an earlier run ({err}); move it away or use "
                             "another --out (nothing was overwritten)") from None
        older = [n for n, r in previous["agents"].items() if isinstance(r, dict) and "train_llm_calls" not in r]
        if older:
            raise ValueError(f"{results_path}: agent {older[0]!r} has no 'train_llm_calls' (written by an older "
                             "version); use another --out (nothing was overwritten)")
        differing = [k for k, v in settings.items() if previous.get("settings", {}).get(k) != v]
        if differing:
            raise ValueError(f"{results_path} holds a run with different {', '.join(differing)}; "
                             "use another --out (nothing was overwritten)")
        results = previous
    agents = {}
    for name in config.agents:
        if name in results["agents"]:
            continue
        try:
            agents[name] = make_seeded_agent(name, config.seed, **config.agent_kwargs.get(name, {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"--agent-kwargs for {name!r}: {err}") from None
        agents[name].check_settings(num_envs=config.num_envs)

    from .encoder import load_encoder
    from .env import PillowMatchEnv
    from .resources import make_engine, shared_backend
    from .vector import PillowMatchVectorEnv

    encoder = load_encoder("minilm")
    common = {"max_new_tokens": config.max_new_tokens, "batch_size": config.num_envs,
              "cache_path": config.cache or out / "cache.sqlite", "log_path": out / "trajectories.jsonl"}
    backbone = shared_backend(config.model, config.adapter)
    engine = make_engine(backbone, encoder, **common)
    train_engine = engine if config.train_reward == "pillow" else make_engine(backbone, encoder, signal="loglik", **common)
    if config.train_reward == "loglik":  # a server that cannot score says so now, before any agent runs
        backbone.loglik(["Say yes."], ["yes"], mean=True)
    test_env = PillowMatchEnv(pool, test, m=config.shots, engine=engine, encoder=encoder,
                              candidates=config.candidates)

    for name in config.agents:
        if name in results["agents"]:
            print(f"{name}: already in {results_path}, skipped")
            continue
        start, start_calls = time.perf_counter(), train_engine.stats.llm_calls
        agent = agents[name]
        log = FitRecord()
        if agent.learns:
            venv = PillowMatchVectorEnv(config.num_envs, pool=pool, queries=train, m=config.shots,
                                        engine=train_engine, encoder=encoder, candidates=config.candidates)
            log = agent.fit(venv, Budget(episodes=config.episodes), progress=progress,
                            tensorboard=out / "tensorboard")
            agent.save(out / "agents" / name)
        train_calls = train_engine.stats.llm_calls - start_calls
        if not agent.rollouts_in_process:  # scored by its own worker processes, which count their LLM calls
            train_calls = log.llm_calls
        evaluation = evaluate(agent, test_env, progress=progress, engine=engine)
        record = {
            **{k: evaluation.means.get(k, float("nan")) for k in METRICS},
            "train_llm_calls": train_calls,
            "eval_llm_calls": evaluation.llm_calls,
            "llm_calls": train_calls + evaluation.llm_calls,
            "episodes": log.episodes,
            "wall_seconds": time.perf_counter() - start,
            "curve": log.history,
            "per_query": evaluation.per_query,
        }
        results["agents"][name] = record
        _write_json(results_path, results)
        print(f"{name}: reward {record['reward']:.3f}  ROUGE-L {record['rouge_l']:.3f}  "
              f"LLM calls {record['llm_calls']}  {record['wall_seconds']:.0f} s")

    add_paired(results, config.reference)
    results["engine"] = engine.stats.as_dict()
    if train_engine is not engine:
        results["train_engine"] = train_engine.stats.as_dict()
    _write_json(results_path, results)
    (out / "results.md").write_text(results_table(results))
    plot_curves(results, out / "curves.png")
    print(results_table(results))
    print(f"wrote {results_path}, {out / 'results.md'}, {out / 'curves.png'}")
    return results


def _run_splits(config: BenchConfig, *, progress: bool) -> dict[str, Any]:
    """One bench per seeded re-split of a built-in suite (``OUT/split-SEED``), then the pooled comparison."""
    from .suite import SUITES

    if not (config.pool == config.train == config.test and config.pool in SUITES):
        raise ValueError(f"--splits re-splits a built-in suite ({', '.join(SUITES)}): give one --suite, not files "
                         f"(got --pool {config.pool}, --train {config.train}, --test {config.test})")
    out = Path(config.out)
    summary_file = out / "results.json"
    if summary_file.exists():
        try:
            earlier = json.loads(summary_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            earlier = None
        if not isinstance(earlier, dict) or "splits" not in earlier:
            raise ValueError(f"{summary_file} is not the pooled summary of an earlier --splits run; move it away or "
                             "use another --out (nothing was overwritten)")
    cache = config.cache or str(out / "cache.sqlite")  # one cache for every split
    runs = [run_bench(replace(config, seed=seed, splits=1, out=str(out / f"split-{seed}"), cache=cache),
                      progress=progress) for seed in range(config.seed, config.seed + config.splits)]
    summary = pool_splits(runs, config.reference or "knn")
    _write_json(out / "results.json", summary)
    (out / "results.md").write_text(pooled_table(summary))
    print(pooled_table(summary))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} (each split under {out}/split-SEED)")
    return summary


def pool_splits(runs: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """Per-split rewards and one paired difference per agent over all splits' test queries, with a 95%
    bootstrap interval resampled within splits."""
    from .stats import paired_bootstrap

    names = [n for n in runs[0]["agents"] if all(n in r["agents"] for r in runs)]
    pooled: dict[str, Any] = {}
    if all(reference in r["agents"] for r in runs):
        for name in names:
            diffs, strata = [], []
            for k, run in enumerate(runs):
                ref = {q["query_index"]: q["reward"] for q in run["agents"][reference]["per_query"]}
                for q in run["agents"][name]["per_query"]:
                    diffs.append(q["reward"] - ref[q["query_index"]])
                    strata.append(k)
            pooled[name] = paired_bootstrap(diffs, strata=strata)
    return {"settings": {**runs[0]["settings"], "seeds": [r["settings"]["seed"] for r in runs]},
            "reference": reference if pooled else None,
            "splits": [{"seed": r["settings"]["seed"], "reward": {n: r["agents"][n]["reward"] for n in names},
                        "paired": {n: r.get("paired", {}).get(n) for n in names}} for r in runs],
            "reward": {n: float(sum(r["agents"][n]["reward"] for r in runs) / len(runs)) for n in names},
            "pooled": pooled}


def pooled_table(summary: dict[str, Any]) -> str:
    reference, seeds = summary["reference"], summary["settings"]["seeds"]
    lines = [f"{len(seeds)} splits (seeds {', '.join(map(str, seeds))}), "
             f"model `{summary['settings']['model']}`, {summary['settings']['shots']} shots.", "",
             "| agent | " + " | ".join(f"split {s}" for s in seeds) +
             f" | mean | pooled vs {reference or 'reference'} [95% CI] | paired queries |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for name, mean in summary["reward"].items():
        d = summary["pooled"].get(name)
        paired = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d and name != reference else "-"
        cells = " | ".join(f"{s['reward'][name]:.3f}" for s in summary["splits"])
        lines.append(f"| {name} | {cells} | {mean:.3f} | {paired} | {d['n'] if d else '-'} |")
    return "\n".join(lines) + "\n"


def add_paired(results: dict[str, Any], reference: str) -> None:
    """Per agent: reward minus the reference agent's on the same test queries, with a 95% paired bootstrap CI."""
    from .stats import paired_bootstrap

    agents = results["agents"]
    results["reference"] = reference if reference in agents else None
    results["paired"] = {}
    if reference not in agents:
        return
    ref = {r["query_index"]: r["reward"] for r in agents[reference]["per_query"]}
    for name, record in agents.items():
        diffs = [r["reward"] - ref[r["query_index"]] for r in record["per_query"] if r["query_index"] in ref]
        results["paired"][name] = paired_bootstrap(diffs)


def results_table(results: dict[str, Any]) -> str:
    s = results["settings"]
    reference = results.get("reference")
    train = " (trained on the likelihood signal)" if s.get("train_reward") == "loglik" else ""
    shortlist = f", actions restricted to the {s['candidates']} nearest exemplars" if s.get("candidates") else ""
    lines = [f"Model `{s['model']}`{' + adapter ' + str(s['adapter']) if s['adapter'] else ''}, "
             f"{s['shots']} shots, {s['episodes']} training episodes per learning agent{train}{shortlist}, "
             f"seed {s['seed']}.", "",
             f"| agent | reward | vs {reference or 'reference'} [95% paired CI] | ROUGE-L | "
             "semantic | exact match | LLM calls (train + eval) | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["agents"].items():
        d = results.get("paired", {}).get(name)
        paired = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d and reference != name else "-"
        lines.append(f"| {name} | {r['reward']:.3f} | {paired} | {r['rouge_l']:.3f} | {r['semantic']:.3f} | "
                     f"{r['exact_match']:.3f} | {r['train_llm_calls']} + {r['eval_llm_calls']} | "
                     f"{r['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], path: Path, window: int = 10) -> None:
    """Training reward vs episodes for learning agents; held-out rewards of all agents as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, r) in enumerate(results["agents"].items()):
        curve = r.get("curve") or []
        if curve:
            x = np.array([c["episodes"] for c in curve])
            y = np.array([c["reward"] for c in curve])
            k = min(window, len(y))
            smooth = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(x[k - 1:], smooth, color=f"C{i % 10}", label=f"{name} (train, moving avg)")
    for i, (name, r) in enumerate(results["agents"].items()):
        ax.axhline(r["reward"], ls="--", lw=1, color=f"C{i % 10}", alpha=0.6)
        ax.annotate(f"{name} test {r['reward']:.3f}", (1.0, r["reward"]), xycoords=("axes fraction", "data"),
                    fontsize=7, ha="right", va="bottom", color=f"C{i % 10}")
    ax.set_xlabel("training episodes")
    ax.set_ylabel("reward (0.5 ROUGE-L + 0.5 MiniLM cosine)")
    ax.set_title("pillow-env bench")
    if any(r.get("curve") for r in results["agents"].values()):
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
