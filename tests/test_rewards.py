import numpy as np
import pytest

from pillow_env import Example
from pillow_env.rewards import PillowReward, RewardError, SemanticSimilarity, check_reward, exact_match, rouge_l


def test_rouge_l_known_values():
    scores = rouge_l(["the cat sat", "apple", ""], ["the cat sat", "banana", "x"])
    assert scores[0] == pytest.approx(1.0) and scores[1] == 0.0 and scores[2] == 0.0
    # LCS "the cat" (2 of 3 words each side) -> P = R = F = 2/3
    assert rouge_l(["the cat ran"], ["the cat sat"])[0] == pytest.approx(2 / 3)


def test_exact_match_normalises_case_space_and_end_punctuation():
    assert exact_match(["Positive.", " paris ", "New  Delhi", "cats"], ["positive", "Paris", "new delhi", "cat"]).tolist() \
        == [1.0, 1.0, 1.0, 0.0]


def test_semantic_similarity_with_encoder(hash_encoder):
    sim = SemanticSimilarity(hash_encoder)(["hello world", "hello world"], ["hello world", "zzzz qqqq"])
    assert sim[0] == pytest.approx(1.0, abs=1e-5) and sim[1] < 0.5


def test_pillow_reward_combines_components(hash_encoder):
    reward = PillowReward(text_weight=0.3, semantic_weight=0.7, encoder=hash_encoder)
    parts = reward(["the cat sat", "dog"], ["the cat sat", "a cat"])
    assert set(parts) == {"rouge_l", "semantic", "exact_match", "reward"}
    np.testing.assert_allclose(parts["reward"], 0.3 * parts["rouge_l"] + 0.7 * parts["semantic"])
    assert parts["reward"][0] == pytest.approx(1.0, abs=1e-5)
    assert PillowReward(encoder=hash_encoder).fingerprint != reward.fingerprint


def test_extra_reward_is_reported_and_weighted(hash_encoder):
    def length_ok(preds, refs):
        return np.array([float(len(p) <= len(r)) for p, r in zip(preds, refs)])

    reward = PillowReward(encoder=hash_encoder, extra={"length_ok": length_ok}, extra_weights={"length_ok": 0.5})
    parts = reward(["short", "much longer text"], ["short!", "tiny"])
    assert parts["length_ok"].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(parts["reward"], 0.5 * parts["rouge_l"] + 0.5 * parts["semantic"] + 0.5 * parts["length_ok"])
    with pytest.raises(ValueError, match="not in extra"):
        PillowReward(encoder=hash_encoder, extra_weights={"nope": 1.0})


@pytest.mark.parametrize("values, message", [
    ([0.1, float("nan")], r"reward 'mine' returned nan \(not finite\) for item 1"),
    ([0.1, 1.5], r"reward 'mine' returned 1.5 for item 1, outside \[-1.0, 1.0\]"),
    ([0.1], r"reward 'mine' returned 1 values for 2 predictions"),
    (["a", "b"], r"reward 'mine' returned non-numeric"),
])
def test_bad_reward_values_name_the_reward(values, message):
    with pytest.raises(RewardError, match=message):
        check_reward("mine", values, 2)


def test_custom_reward_nan_is_caught_inside_pillow_reward(hash_encoder):
    reward = PillowReward(encoder=hash_encoder, extra={"broken": lambda p, r: np.full(len(p), np.nan)})
    with pytest.raises(RewardError, match="reward 'broken'"):
        reward(["a"], ["b"])


def test_pillow_reward_fingerprint_needs_fingerprinted_extras(hash_encoder):
    def bonus(p, r):
        return np.zeros(len(p))

    assert PillowReward(encoder=hash_encoder, extra={"bonus": bonus}).fingerprint is None  # never cached
    bonus.fingerprint = "bonus-v1"
    first = PillowReward(encoder=hash_encoder, extra={"bonus": bonus}).fingerprint
    bonus.fingerprint = "bonus-v2"
    assert first is not None and PillowReward(encoder=hash_encoder, extra={"bonus": bonus}).fingerprint != first


def test_reward_fingerprint_is_what_the_reward_declares():
    from pillow_env.rewards import reward_fingerprint

    def named(p, r):
        return np.zeros(len(p))

    assert reward_fingerprint(named) is None
    named.fingerprint = "my-reward-v2"
    assert reward_fingerprint(named) == "my-reward-v2"


@pytest.mark.parametrize("out, message", [({"reward": [float("nan")]}, "not finite"),
                                          ({"reward": [7.0]}, "outside"),
                                          ({"reward": [0.5], "extra": [float("inf")]}, "extra.*not finite")])
def test_a_mapping_reward_is_checked_like_any_other(tiny_backbone, tmp_path, out, message):
    from pillow_env.engine import RewardEngine

    engine = RewardEngine(tiny_backbone, lambda p, r: out, max_new_tokens=3, cache_path=tmp_path / "c.sqlite")
    with pytest.raises(RewardError, match=message):
        engine.score([([], Example("Reverse the word.", "fig", "gif"))])
    assert len(engine._disk) == 0
