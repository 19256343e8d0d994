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
