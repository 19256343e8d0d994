"""A custom reward is never served stale from the cache: without a declared ``fingerprint`` it is
recomputed from the cached generation every time, whatever shape its hidden settings take."""

import functools
import os
import types

import numpy as np
import pytest

from pillow_env.data import Example
from pillow_env.engine import RewardEngine

REQUESTS = [([], Example("Reverse the word.", "fig", "gif")), ([], Example("Reverse the word.", "ant", "tna"))]
GLOBAL_ARRAY = np.array([0.9])
GLOBAL_NS = types.SimpleNamespace(value=0.9)
GLOBAL_DICT = {"value": np.float32(0.9)}
MODULE = types.ModuleType("settings_module")
MODULE.value = 0.9


class Scorer:
    def __init__(self, value):
        self.value = value

    def score(self, predictions, references):
        return np.full(len(predictions), self.value)


class ClassSetting:
    value = 0.9

    def __call__(self, predictions, references):
        return np.full(len(predictions), type(self).value)


def scaled(predictions, references, *, scale):
    return np.full(len(predictions), scale)


def from_array(predictions, references):
    return np.full(len(predictions), GLOBAL_ARRAY[0])


def from_namespace(predictions, references):
    return np.full(len(predictions), GLOBAL_NS.value)


def from_module(predictions, references):
    return np.full(len(predictions), MODULE.value)


def from_generator(predictions, references):
    return np.array([GLOBAL_ARRAY[0] for _ in predictions])


def from_dict(predictions, references):
    return np.full(len(predictions), float(GLOBAL_DICT["value"]))


def from_environ(predictions, references):
    return np.full(len(predictions), float(os.environ.get("PILLOW_TEST_REWARD", "0.9")))


def _set(shape, value, monkeypatch):
    """Make the reward of ``shape`` return ``value``; return the reward callable."""
    if shape == "bound method":
        return Scorer(value).score
    if shape == "partial":
        return functools.partial(scaled, scale=value)
    if shape == "class attribute":
        monkeypatch.setattr(ClassSetting, "value", value)
        return ClassSetting()
    if shape == "global array":
        monkeypatch.setitem(globals(), "GLOBAL_ARRAY", np.array([value]))
        return from_array
    if shape == "namespace":
        monkeypatch.setattr(GLOBAL_NS, "value", value)
        return from_namespace
    if shape == "module attribute":
        monkeypatch.setattr(MODULE, "value", value)
        return from_module
    if shape == "generator expression":
        monkeypatch.setitem(globals(), "GLOBAL_ARRAY", np.array([value]))
        return from_generator
    if shape == "dict of np.float32":
        monkeypatch.setitem(GLOBAL_DICT, "value", np.float32(value))
        return from_dict
    monkeypatch.setenv("PILLOW_TEST_REWARD", str(value))
    return from_environ


@pytest.mark.parametrize("shape", ["bound method", "partial", "class attribute", "global array", "namespace",
                                   "module attribute", "generator expression", "dict of np.float32", "os.environ"])
def test_changed_setting_is_never_served_stale(tiny_backbone, tmp_path, monkeypatch, shape):
    cache = tmp_path / "cache.sqlite"
    first = RewardEngine(tiny_backbone, _set(shape, 0.9, monkeypatch), max_new_tokens=3, cache_path=cache)
    assert [r.reward for r in first.score(REQUESTS)] == pytest.approx([0.9, 0.9])
    first.close()
    second = RewardEngine(tiny_backbone, _set(shape, 0.1, monkeypatch), max_new_tokens=3, cache_path=cache)
    results = second.score(REQUESTS)
    assert [r.reward for r in results] == pytest.approx([0.1, 0.1])  # the new value, not the cached 0.9
    assert second.stats.generations == 0 and all(r.cached for r in results)  # the generations were reused
    assert second.stats.rescored == 2
    again = second.score(REQUESTS)  # from memory: still rescored, never a stored score
    assert [r.reward for r in again] == pytest.approx([0.1, 0.1]) and second.stats.rescored == 4


def test_declared_fingerprint_caches_scores(tiny_backbone, tmp_path):
    cache = tmp_path / "cache.sqlite"
    calls = []

    def reward(predictions, references):
        calls.append(len(predictions))
        return np.full(len(predictions), 0.5)

    reward.fingerprint = "half-v1"
    RewardEngine(tiny_backbone, reward, max_new_tokens=3, cache_path=cache).score(REQUESTS)
    engine = RewardEngine(tiny_backbone, reward, max_new_tokens=3, cache_path=cache)
    assert [r.reward for r in engine.score(REQUESTS)] == [0.5, 0.5]
    assert calls == [2] and engine.stats.rescored == 0 and engine.stats.disk_hits == 2
    reward.fingerprint = "half-v2"  # a new declared version: scored afresh
    assert RewardEngine(tiny_backbone, reward, max_new_tokens=3, cache_path=cache).score(REQUESTS)[0].cached is False


def test_logged_episodes_of_an_unfingerprinted_reward_match_only_their_own_engine(tiny_backbone):
    def zeros(predictions, references):
        return np.zeros(len(predictions))

    def ones(predictions, references):
        return np.ones(len(predictions))

    a, b = RewardEngine(tiny_backbone, zeros), RewardEngine(tiny_backbone, ones)
    assert a.fingerprint != b.fingerprint  # a trajectory log never hands one reward's scores to another
    ones.fingerprint = "ones-v1"
    assert RewardEngine(tiny_backbone, ones).fingerprint == RewardEngine(tiny_backbone, ones).fingerprint
