"""`pillow-env bench --splits K`: K seeded re-splits of a built-in suite, pooled (tiny model)."""

import json

import numpy as np
import pytest

from pillow_env.bench import BenchConfig, run_bench
from pillow_env.cli import main
from pillow_env.env import PillowMatchEnv
from pillow_env.stats import paired_bootstrap


def test_splits_pool_every_split_paired(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    summary = run_bench(BenchConfig(agents=["zero_shot", "knn"], model=str(tiny_model_dir), out=str(out),
                                    test_limit=5, max_new_tokens=3, splits=2, seed=4), progress=False)
    assert summary["settings"]["seeds"] == [4, 5]
    runs = [json.loads((out / f"split-{s}" / "results.json").read_text()) for s in (4, 5)]
    assert runs[0]["settings"]["test"] != runs[1]["settings"]["test"]  # re-split, not repeated
    assert (out / "cache.sqlite").is_file() and not (out / "split-4" / "cache.sqlite").exists()  # one cache
    diffs, strata = [], []
    for k, run in enumerate(runs):
        ref = {q["query_index"]: q["reward"] for q in run["agents"]["knn"]["per_query"]}
        for q in run["agents"]["zero_shot"]["per_query"]:
            diffs.append(q["reward"] - ref[q["query_index"]])
            strata.append(k)
    pooled = summary["pooled"]["zero_shot"]
    assert pooled["n"] == 10 and pooled["mean"] == pytest.approx(float(np.mean(diffs)))
    assert pooled == paired_bootstrap(diffs, strata=strata)
    assert summary["splits"][1]["reward"]["knn"] == runs[1]["agents"]["knn"]["reward"]
    assert json.loads((out / "results.json").read_text()) == summary
    table = (out / "results.md").read_text()
    assert "| zero_shot |" in table and "split 4" in table and "split 5" in table


def test_stratified_bootstrap_keeps_each_split_whole():
    d = np.r_[np.zeros(50), np.ones(50)]
    flat, strata = paired_bootstrap(d), paired_bootstrap(d, strata=[0] * 50 + [1] * 50)
    assert flat["mean"] == strata["mean"] == 0.5
    assert strata["low"] == strata["high"] == 0.5 < flat["high"]  # no between-split noise resampled


def test_splits_refuse_user_files(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(SystemExit):
        main(["bench", "--splits", "2", "--pool", str(pool), "--out", str(tmp_path / "o")])
    assert "--splits re-splits a built-in suite" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_t0_suite_through_env_selector_and_cli(tiny_backbone, hash_encoder, tmp_path):
    from agents import make_agent
    from agents.selector import Selector
    from pillow_env.cli import build_parser
    from pillow_env.engine import RewardEngine
    from pillow_env.rewards import PillowReward
    from pillow_env.suite import t0_suite

    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=2)
    env = PillowMatchEnv("t0", "t0", split="test", engine=engine, encoder=hash_encoder, suite_seed=2)
    assert env.pool == t0_suite(2).pool and env.queries == t0_suite(2).test
    env.reset(seed=0, options={"query_index": 5})
    _, _, _, _, info = env.step(0)
    _, reward, terminated, _, _ = env.step(1)
    assert terminated and np.isfinite(reward)
    selector = Selector(make_agent("knn"), "t0", encoder=hash_encoder, renderer=tiny_backbone.renderer)
    (selection,) = selector.select(t0_suite(0).test[0])
    assert [selector.pool[i] for i in selection.indices] == selection.exemplars
    args = build_parser().parse_args(["bench", "--suite", "t0", "--test", "builtin"])
    assert (args.suite, args.pool, args.test) == ("t0", None, "builtin")


def test_train_limit_takes_the_first_training_queries(tiny_model_dir, tmp_path):
    from pillow_env import builtin_suite
    from pillow_env.data import examples_fingerprint

    results = run_bench(BenchConfig(agents=["knn", "listwise"], model=str(tiny_model_dir), out=str(tmp_path / "b"),
                                    test_limit=2, train_limit=6, episodes=12, max_new_tokens=2), progress=False)
    assert results["settings"]["train"] == examples_fingerprint(builtin_suite(0).train[:6])
    assert results["agents"]["listwise"]["train_llm_calls"] <= 12
