"""The ``selfinstruct`` suite: bundled human-written open-ended tasks, their split, and their generation budget."""

import argparse
import gzip
import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pillow_env.data import resolve_examples
from pillow_env.suite import load_suite, selfinstruct_suite, suite_max_new_tokens

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "pillow_env" / "suite_data" / "selfinstruct.jsonl.gz"
MIRROR = Path(os.environ.get("PILLOW_SELFINSTRUCT_MIRROR", "/work/.mirror/yizhongw+self-instruct/repo"))
PARTS = ("pool", "train", "test")


def _parts(suite):
    return [getattr(suite, name) for name in PARTS]


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sizes_sources_and_fields():
    records = [json.loads(line) for line in gzip.open(BUNDLED)]
    by_source = Counter(r["source"] for r in records)
    suite = selfinstruct_suite(0)
    pool, train, test = _parts(suite)
    assert len(pool) == by_source["seed"] == 175  # every seed task, the pool
    assert len(train) + len(test) == by_source["user_oriented"] and len(test) >= 120
    assert abs(len(train) - len(test)) <= 1
    assert {e.metadata["source"] for e in pool} == {"seed"}
    assert {e.metadata["source"] for e in train + test} == {"user_oriented"}
    assert all(e.instruction and e.output and e.task == e.metadata["task"] for e in pool + train + test)
    assert all("name" in e.metadata and "is_classification" in e.metadata for e in pool)
    assert all(e.metadata["motivation_app"] for e in train + test)


@pytest.mark.parametrize("seed", [0, 3])
def test_no_instruction_or_task_in_two_parts(seed):
    parts = _parts(selfinstruct_suite(seed))
    instructions = [{e.instruction for e in part} for part in parts]
    tasks = [{e.task for e in part} for part in parts]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not instructions[a] & instructions[b], (PARTS[a], PARTS[b])
            assert not tasks[a] & tasks[b], (PARTS[a], PARTS[b])
    assert sum(map(len, tasks)) == sum(map(len, parts))  # one record per task


def test_train_and_test_halve_every_app():
    suite = selfinstruct_suite(0)
    train, test = (Counter(e.metadata["motivation_app"] for e in part) for part in (suite.train, suite.test))
    assert max(abs(train[app] - test[app]) for app in train | test) <= 1


def test_seeded_resplit_keeps_the_pool():
    assert selfinstruct_suite(1) == selfinstruct_suite(1)
    assert selfinstruct_suite(1).pool == selfinstruct_suite(2).pool
    assert set(selfinstruct_suite(1).test) != set(selfinstruct_suite(2).test)
    assert load_suite("selfinstruct", 1) == selfinstruct_suite(1)
    assert resolve_examples("selfinstruct", "test", seed=1) == selfinstruct_suite(1).test


def test_generation_budget_is_stated_only_for_selfinstruct():
    budget = suite_max_new_tokens("selfinstruct")
    assert isinstance(budget, int) and budget > 24
    assert suite_max_new_tokens("builtin") is None and suite_max_new_tokens("t0") is None
    assert suite_max_new_tokens("some/file.jsonl") is None and suite_max_new_tokens([]) is None


def test_env_episode_takes_the_suites_budget(tiny_model_dir, hash_encoder):
    from pillow_env.env import PillowMatchEnv

    env = PillowMatchEnv("selfinstruct", "selfinstruct", split="test", model=str(tiny_model_dir),
                         encoder=hash_encoder, suite_seed=2)
    assert env.pool == selfinstruct_suite(2).pool and env.queries == selfinstruct_suite(2).test
    assert env.engine.max_new_tokens == suite_max_new_tokens("selfinstruct")
    env.reset(seed=0, options={"query_index": 3})
    env.step(0)
    _, reward, terminated, _, info = env.step(1)
    assert terminated and np.isfinite(reward) and info["reference"] == env.queries[3].output
    given = PillowMatchEnv("selfinstruct", "selfinstruct", model=str(tiny_model_dir), encoder=hash_encoder,
                           max_new_tokens=5)
    builtin = PillowMatchEnv("builtin", "builtin", model=str(tiny_model_dir), encoder=hash_encoder)
    assert given.engine.max_new_tokens == 5 and builtin.engine.max_new_tokens == 24


def test_bench_cli_and_splits_take_the_suites_budget(tiny_model_dir, tmp_path):
    from pillow_env.bench import BenchConfig, run_bench
    from pillow_env.cli import build_parser

    args = build_parser().parse_args(["bench", "--suite", "selfinstruct", "--splits", "2"])
    assert (args.suite, args.max_new_tokens, args.splits) == ("selfinstruct", None, 2)
    assert build_parser().parse_args(["demo", "--suite", "selfinstruct"]).max_new_tokens is None
    config = BenchConfig(pool="selfinstruct", train="selfinstruct", test="selfinstruct", agents=["zero_shot"],
                         model=str(tiny_model_dir), out=str(tmp_path / "b"), test_limit=2, train_limit=2,
                         num_envs=2, splits=2)
    pooled = run_bench(config, progress=False)
    assert [s["seed"] for s in pooled["splits"]] == [0, 1]
    settings = [json.loads((tmp_path / "b" / f"split-{seed}" / "results.json").read_text())["settings"]
                for seed in (0, 1)]
    assert [s["max_new_tokens"] for s in settings] == [suite_max_new_tokens("selfinstruct")] * 2
    assert settings[0]["test"] != settings[1]["test"] and settings[0]["pool"] == settings[1]["pool"]  # re-split


def test_bench_pillow_takes_the_suite():
    module = _module(ROOT / "benchmarks" / "bench_pillow.py", "bench_pillow")
    args = argparse.Namespace(data="selfinstruct", seed=0, pool_size=None, train_size=None, test_size=None)
    pool, train, test = module.split_data(args)
    suite = selfinstruct_suite(0)
    assert (pool, train, test) == (suite.pool, suite.train, suite.test)


@pytest.mark.skipif(not MIRROR.exists(), reason="no mirror of the self-instruct repository here")
def test_rebuild_script_reproduces_the_bundled_file():
    build = _module(ROOT / "benchmarks" / "data" / "build_selfinstruct_suite.py", "build_selfinstruct")
    rebuilt = build.build(MIRROR)
    assert gzip.decompress(rebuilt) == gzip.decompress(BUNDLED.read_bytes())
    assert rebuilt == BUNDLED.read_bytes()


def test_demo_uses_the_nearest_exemplars_where_every_query_is_its_own_task(tiny_model_dir, tmp_path):
    from pillow_env.cli import main

    main(["demo", "--suite", "selfinstruct", "--model", str(tiny_model_dir), "--queries", "2",
          "--max-new-tokens", "3", "--out", str(tmp_path / "demo.json")])
    results = json.loads((tmp_path / "demo.json").read_text())["results"]
    assert list(results) == ["zero-shot", "random 2-shot", "nearest 2-shot"]
    assert all(np.isfinite(r["reward"]) for r in results.values())


@pytest.mark.real
def test_budget_follows_the_measured_answer_lengths():
    """The stated budget is the query answers' 90th-percentile SmolLM2 token count, capped: at least their median."""
    from pillow_env.backends import DEFAULT_MODEL, load_renderer

    tokenizer = load_renderer(DEFAULT_MODEL).tokenizer
    suite = selfinstruct_suite(0)
    lengths = [len(tokenizer(e.output, add_special_tokens=False)["input_ids"]) for e in suite.train + suite.test]
    budget = suite_max_new_tokens("selfinstruct")
    assert np.median(lengths) < budget <= np.percentile(lengths, 90)
