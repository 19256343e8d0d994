"""``pillow-env bench``: train the learning agents, evaluate every agent, write JSON, Markdown and a plot.

All agents share one LLM, one reward engine and one disk cache (``OUT/cache.sqlite`` unless
``--cache``), so no answer is generated twice; every scored episode is appended to
``OUT/trajectories.jsonl``. Learners may train on the likelihood signal (``train_reward="loglik"``);
evaluation always uses the generation-based ``PillowReward``. Each agent is compared with a
reference agent (kNN by default) on the same test queries: mean difference and 95% paired
bootstrap interval. One run at a time writes a results folder (a lock on ``OUT/.lock``; a second
is refused naming the first's pid). ``results.json`` is rewritten after each agent: an interrupted
run keeps every finished agent and, re-run with the same settings and the same weights (the
backend's fingerprint, not the ``--model`` string), skips them; the log records of the agent it
was killed in are cut from ``trajectories.jsonl``, as that agent runs again. ``splits=K`` runs all
of that on K seeded re-splits of a built-in suite and pools the paired differences (``pool_splits``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends import DEFAULT_MODEL
from .data import Example, cut_queries, examples_fingerprint, require_answers, resolve_examples
from .outputs import Interrupted, claim_folder, naming, write_json, write_text
from .suite import suite_max_new_tokens

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
    max_new_tokens: int | None = None  # None: the test suite's (suite_max_new_tokens), else 24
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


def check_shots(shots: int, candidates: int | None, pool: list[Example]) -> None:
    """``--shots`` and ``--candidates`` against the pool, in the CLI's words, before anything loads."""
    if shots > len(pool):
        raise ValueError(f"--shots {shots}: the pool holds only {len(pool)} exemplars")
    if candidates is not None and candidates < shots:
        raise ValueError(f"--candidates {candidates} must be at least --shots {shots} (a prompt takes --shots "
                         "of the candidates)")


def run_bench(config: BenchConfig, *, progress: bool = True) -> dict[str, Any]:
    from agents import AGENTS, Budget, check_agent_kwargs

    unknown = [a for a in [*config.agents, *config.agent_kwargs] if a not in AGENTS]
    if unknown:
        raise ValueError(f"unknown agent(s) {', '.join(unknown)}; valid agents: {', '.join(AGENTS)}")
    for name, kwargs in config.agent_kwargs.items():  # every agent's settings, before any agent runs
        try:
            check_agent_kwargs(name, kwargs)
        except ValueError as err:
            raise ValueError(f"--agent-kwargs for {name!r}: {err}") from None
    Budget(episodes=config.episodes)  # a NaN, infinite or non-positive budget is refused here
    from .engine import TRAIN_REWARDS

    if config.train_reward not in TRAIN_REWARDS:
        raise ValueError(f"train_reward must be one of {', '.join(TRAIN_REWARDS)}, got {config.train_reward!r}")
    if config.max_new_tokens is None:
        config = replace(config, max_new_tokens=suite_max_new_tokens(config.test) or 24)
    if config.splits > 1:
        return _run_splits(config, progress=progress)
    pool = resolve_examples(config.pool, "pool", seed=config.seed, what="--pool")
    train = resolve_examples(config.train, "train", seed=config.seed, what="--train")
    test = resolve_examples(config.test, "test", seed=config.seed, what="--test")
    for what, examples in (("--pool", pool), ("--train", train), ("--test", test)):
        require_answers(examples, what)
    check_shots(config.shots, config.candidates, pool)
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
    test, train = cut_queries(test, "--test"), cut_queries(train, "--train")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    from .cache import check_cache_path

    check_cache_path(config.cache or out / "cache.sqlite")  # before --out is created: a refusal leaves nothing
    with claim_folder(out):  # one writer per results folder, from here to the end
        return _run_claimed(config, out, pool, train, test, progress)


def _run_claimed(config: BenchConfig, out: Path, pool: list[Example], train: list[Example], test: list[Example],
                 progress: bool) -> dict[str, Any]:
    from agents import Budget, FitRecord, evaluate, make_seeded_agent

    budget = Budget(episodes=config.episodes)
    results_path = out / "results.json"
    log_path = out / "trajectories.jsonl"
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
        agents[name].check_settings(num_envs=config.num_envs, budget=budget)

    from .encoder import load_encoder
    from .env import PillowMatchEnv
    from .resources import make_engine, shared_backend
    from .vector import PillowMatchVectorEnv

    try:
        encoder = load_encoder("minilm")
        backbone = shared_backend(config.model, config.adapter)
        if config.train_reward == "loglik":  # a backend that cannot score says so now, before anything is written
            if not callable(getattr(backbone, "loglik", None)):
                from .backends import LikelihoodUnsupported

                raise LikelihoodUnsupported(f"the LLM backend {type(backbone).__name__} cannot score likelihoods; "
                                            "use --train-reward pillow or an in-process Hugging Face model")
            backbone.loglik(["Say yes."], ["yes"], mean=True)
        # Resume by content: the weights' fingerprint (the cache key's), not the --model / --adapter strings.
        fingerprint = backbone.fingerprint
        earlier = results["settings"].get("model_fingerprint")
        if results["agents"] and earlier != fingerprint:
            raise ValueError(f"{results_path} was computed with other weights behind --model {config.model}"
                             f"{' --adapter ' + config.adapter if config.adapter else ''} (fingerprint {earlier}, "
                             f"now {fingerprint}); use another --out (nothing was overwritten)")
        results["settings"]["model_fingerprint"] = fingerprint
        results["options"] = _options(config, pool, train, test)
        _drop_unfinished_trajectories(log_path, results.get("trajectories_bytes"))
        results["trajectories_bytes"] = _size(log_path)
        write_json(results_path, results)  # from now on a rerun knows which log records are the finished agents'
        common = {"max_new_tokens": config.max_new_tokens, "batch_size": config.num_envs,
                  "cache_path": config.cache or out / "cache.sqlite", "log_path": log_path}
        engine = make_engine(backbone, encoder, **common)
        train_engine = engine if config.train_reward == "pillow" else \
            make_engine(backbone, encoder, signal="loglik", **common)
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
                with naming(out / "agents" / name):
                    agent.save(out / "agents" / name)
            train_calls = train_engine.stats.llm_calls - start_calls
            if not agent.rollouts_in_process:  # scored by its own worker processes, which count their LLM calls
                train_calls = log.llm_calls
            evaluation = evaluate(agent, test_env, progress=progress, engine=engine)
            record = {
                **{k: evaluation.means.get(k) for k in METRICS},  # None (null): a metric the reward did not give
                "train_llm_calls": train_calls,
                "eval_llm_calls": evaluation.llm_calls,
                "llm_calls": train_calls + evaluation.llm_calls,
                "episodes": log.episodes,
                "wall_seconds": time.perf_counter() - start,
                "curve": log.history,
                "per_query": evaluation.per_query,
            }
            results["agents"][name] = record
            results["trajectories_bytes"] = _size(log_path)
            write_json(results_path, results)
            print(f"{name}: reward {_num(record['reward'])}  ROUGE-L {_num(record['rouge_l'])}  "
                  f"LLM calls {record['llm_calls']}  {record['wall_seconds']:.0f} s")
    except KeyboardInterrupt:
        done = list(results["agents"])
        raise Interrupted(f"{len(done)} finished agent(s) ({', '.join(done) or 'none'}) in {results_path}; "
                          "rerun the same command to do the rest") from None

    add_paired(results, config.reference)
    results["engine"] = engine.stats.as_dict()
    if train_engine is not engine:
        results["train_engine"] = train_engine.stats.as_dict()
    write_json(results_path, results)
    write_text(out / "results.md", results_table(results))
    with naming(out / "curves.png"):
        plot_curves(results, out / "curves.png")
    print(results_table(results))
    print(f"wrote {results_path}, {out / 'results.md'}, {out / 'curves.png'}")
    return results


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _drop_unfinished_trajectories(log_path: Path, kept_bytes: Any) -> None:
    """Cut ``trajectories.jsonl`` back to where the last finished agent left it: the records after that
    are a killed run's unfinished agent, which the rerun trains again (and would log twice)."""
    size = _size(log_path)
    if not isinstance(kept_bytes, int) or isinstance(kept_bytes, bool) or not 0 <= kept_bytes < size:
        return
    with open(log_path, "rb+") as f:
        f.seek(kept_bytes)
        dropped = sum(1 for line in f if line.strip())
        f.truncate(kept_bytes)
    print(f"{log_path}: dropped {dropped} record(s) of the interrupted run's unfinished agent (it is run again)")


def _options(config: BenchConfig, pool: list[Example], train: list[Example], test: list[Example]) -> dict[str, Any]:
    """The options behind the run as given (sources, limits, agents): what ``results.md`` states."""
    return {"pool": config.pool, "train": config.train, "test": config.test, "train_limit": config.train_limit,
            "test_limit": config.test_limit, "sizes": {"pool": len(pool), "train": len(train), "test": len(test)},
            "agents": list(config.agents), "reference": config.reference, "splits": config.splits}


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
    from .cache import check_cache_path

    check_cache_path(cache)  # before --out is created: a refusal leaves nothing
    with claim_folder(out):
        runs = [run_bench(replace(config, seed=seed, splits=1, out=str(out / f"split-{seed}"), cache=cache),
                          progress=progress) for seed in range(config.seed, config.seed + config.splits)]
        summary = pool_splits(runs, config.reference or "knn")
        write_json(out / "results.json", summary)
        write_text(out / "results.md", pooled_table(summary))
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
            "options": {**runs[0].get("options", {}), "splits": len(runs)},
            "reference": reference if pooled else None,
            "splits": [{"seed": r["settings"]["seed"], "reward": {n: r["agents"][n]["reward"] for n in names},
                        "paired": {n: r.get("paired", {}).get(n) for n in names}} for r in runs],
            "reward": {n: float(sum(r["agents"][n]["reward"] for r in runs) / len(runs)) for n in names},
            "pooled": pooled}


def pooled_table(summary: dict[str, Any]) -> str:
    reference, seeds = summary["reference"], summary["settings"]["seeds"]
    lines = [f"{len(seeds)} splits (seeds {', '.join(map(str, seeds))}) of the built-in suite.",
             *_describe(summary["settings"], summary.get("options", {})), "",
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


def _num(value: Any) -> str:
    """A metric for a table: three decimals, or ``-`` where the reward did not give it (``null``)."""
    return "-" if value is None else f"{value:.3f}"


def _describe(s: dict[str, Any], o: dict[str, Any]) -> list[str]:
    """Every option that shaped a run, in words (what ``results.md`` must say for a reader to rerun it)."""
    adapter = f" + adapter `{s['adapter']}`" if s.get("adapter") else ""
    fingerprint = f" (weights fingerprint {s['model_fingerprint']})" if s.get("model_fingerprint") else ""

    def part(name: str) -> str:
        limit = o.get(f"{name}_limit")
        size = o.get("sizes", {}).get(name)
        return (f"{name} `{o.get(name, '?')}`" + (f" (first {limit})" if limit else "") +
                (f": {size}" if size is not None else ""))

    kwargs = json.dumps(s.get("agent_kwargs") or {}, sort_keys=True)
    actions = f"restricted to the {s['candidates']} nearest exemplars" if s.get("candidates") else "over the whole pool"
    return [f"Model `{s['model']}`{adapter}{fingerprint}; {s['shots']} shots; max_new_tokens {s['max_new_tokens']}; "
            f"seed {s['seed']}.",
            f"Data: {', '.join(part(n) for n in ('pool', 'train', 'test'))} examples.",
            f"Training: {s['episodes']} episodes per learning agent (listwise: LLM calls), {s['num_envs']} episodes "
            f"per batched call, train reward `{s.get('train_reward', 'pillow')}`, actions {actions}, "
            f"agent kwargs `{kwargs}`."]


def results_table(results: dict[str, Any]) -> str:
    reference = results.get("reference")
    lines = [*_describe(results["settings"], results.get("options", {})), "",
             f"| agent | reward | vs {reference or 'reference'} [95% paired CI] | ROUGE-L | "
             "semantic | exact match | LLM calls (train + eval) | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["agents"].items():
        d = results.get("paired", {}).get(name)
        paired = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d and reference != name else "-"
        lines.append(f"| {name} | {_num(r['reward'])} | {paired} | {_num(r['rouge_l'])} | {_num(r['semantic'])} | "
                     f"{_num(r['exact_match'])} | {r['train_llm_calls']} + {r['eval_llm_calls']} | "
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
