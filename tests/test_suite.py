from collections import Counter

from pillow_env import builtin_suite
from pillow_env.suite import TASKS


def test_sizes_and_tasks():
    suite = builtin_suite(0)
    assert len(suite.pool) >= 60 and len(suite.train) >= 200 and len(suite.test) >= 100
    assert len(TASKS) >= 12
    for part in (suite.pool, suite.train, suite.test):
        assert set(Counter(e.task for e in part)) == {t.name for t in TASKS}


def test_deterministic_by_seed():
    assert builtin_suite(1) == builtin_suite(1)
    assert builtin_suite(1).test != builtin_suite(2).test


def test_inputs_never_repeat_across_splits():
    suite = builtin_suite(0)
    seen = Counter((e.task, e.input) for part in (suite.pool, suite.train, suite.test) for e in part)
    assert max(seen.values()) == 1


def test_answers_are_correct_and_vague_phrasings_present():
    suite = builtin_suite(0)
    everything = suite.pool + suite.train + suite.test
    for e in everything:
        if e.task == "reverse":
            assert e.output == e.input[::-1]
        if e.task == "addition":
            a, b = e.input.split(" + ")
            assert int(e.output) == int(a) + int(b)
    vague = {t.name: t.phrasings[-1] for t in TASKS}
    assert any(e.instruction == vague[e.task] for e in everything)
    assert all(len(e.output.split()) <= 8 for e in everything)  # short completions


# --- the t0 suite: third-party prompted tasks, bundled ---------------------------------------------
import gzip  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pillow_env.data import resolve_examples  # noqa: E402
from pillow_env.suite import load_suite, t0_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESERVED = ("ag_news", "rotten_tomatoes", "glue_mrpc", "gigaword", "common_gen", "yelp_review_full", "trec",
            "amazon_polarity", "sciq", "glue_qqp", "dbpedia_14", "imdb")
MIRROR = Path(os.environ.get("PILLOW_T0_MIRROR", "/work/.mirror/yizhongw+self-instruct/repo"))


def test_t0_sizes_templates_and_sources():
    suite = t0_suite(0)
    assert len(suite.train) >= 1200 and len(suite.test) >= 600
    per_template = Counter(e.task for e in suite.pool)
    assert len(per_template) >= 24 and min(per_template.values()) >= 12
    assert len({e.metadata["dataset"] for e in suite.pool}) >= 10
    for part in (suite.pool, suite.train, suite.test):
        assert set(Counter(e.task for e in part)) == set(per_template)  # every template in every part
        assert not any(e.task.startswith(RESERVED) for e in part)
    assert len({(e.instruction, e.output) for e in suite.pool}) == len(suite.pool)  # no repeated record


def test_t0_splits_never_share_an_underlying_example():
    for seed in (0, 3):
        suite = t0_suite(seed)
        examples = [{e.metadata["example"] for e in part} for part in (suite.pool, suite.train, suite.test)]
        assert not examples[0] & examples[1] and not examples[0] & examples[2] and not examples[1] & examples[2]
        prompts = [{e.instruction for e in part} for part in (suite.pool, suite.train, suite.test)]
        assert not prompts[0] & prompts[1] and not prompts[0] & prompts[2] and not prompts[1] & prompts[2]


def test_t0_is_seeded_and_named_like_builtin():
    assert t0_suite(1) == t0_suite(1) and t0_suite(1).test != t0_suite(2).test
    assert load_suite("t0", 1) == t0_suite(1) and load_suite("builtin", 1) == builtin_suite(1)
    assert resolve_examples("t0", "test", seed=1) == t0_suite(1).test
    with pytest.raises(ValueError, match="unknown suite 'bogus'"):
        load_suite("bogus")


@pytest.mark.skipif(not MIRROR.exists(), reason="no mirror of the self-instruct repository here")
def test_t0_rebuild_script_reproduces_the_bundled_file(tmp_path):
    spec = importlib.util.spec_from_file_location("build_t0", ROOT / "benchmarks" / "data" / "build_t0_suite.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    bundled = (ROOT / "pillow_env" / "suite_data" / "t0.jsonl.gz").read_bytes()
    rebuilt = build.build(MIRROR)
    assert gzip.decompress(rebuilt) == gzip.decompress(bundled)
    assert rebuilt == bundled
