"""Real tier: the embedded defaults (SmolLM2-135M-Instruct from its wheel, MiniLM). CI runs these."""

import numpy as np
import pytest

from pillow_env import Example
from pillow_env.backends import hf as backbone_mod
from pillow_env.backends.hf import Backbone, resolve_model
from pillow_env.encoder import load_encoder
from pillow_env.rewards import PillowReward

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2():
    return Backbone.from_pretrained("smollm2-135m-instruct")


def test_smollm2_loads_offline_and_answers(smollm2):
    exemplars = [Example("Classify the review as positive or negative.", "The show was superb.", "positive"),
                 Example("Classify the review as positive or negative.", "The meal was dreadful.", "negative")]
    query = Example("Classify the review as positive or negative.", "The hotel was awful.", "negative")
    prompt = smollm2.renderer.render(exemplars, query)
    assert "<|im_start|>assistant\npositive<|im_end|>" in prompt
    (answer,) = smollm2.generate([prompt], max_new_tokens=8)
    assert answer.lower().startswith(("negative", "positive"))
    right, wrong = smollm2.loglik([prompt, prompt], ["negative", "apple pie"])
    assert right > wrong


def test_second_load_hits_the_cache(smollm2, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted the GGUF again instead of using the cache")

    monkeypatch.setattr(backbone_mod, "_convert_gguf", no_conversion)
    path = resolve_model("smollm2-135m-instruct")
    assert path.startswith(str(backbone_mod.cache_dir()))
    again = Backbone.from_pretrained("smollm2-135m-instruct")
    assert again.fingerprint == smollm2.fingerprint


def test_minilm_cosine():
    encoder = load_encoder("minilm")
    emb = encoder.encode(["The cat sat on the mat.", "The cat sat on the mat.", "Quarterly tax filing deadlines."])
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) == pytest.approx(1.0, abs=1e-4)
    assert float(emb[0] @ emb[2]) < 0.3


def test_pillow_reward_on_minilm():
    parts = PillowReward()(["Paris", "The capital is Paris.", "bananas"], ["Paris", "Paris", "Paris"])
    assert parts["reward"][0] == pytest.approx(1.0, abs=1e-4)
    assert parts["reward"][0] > parts["reward"][1] > parts["reward"][2]


def test_gym_make_with_no_arguments_runs_an_episode():
    import gymnasium as gym

    import pillow_env  # noqa: F401

    env = gym.make("PillowMatch-v0")
    obs, info = env.reset(seed=0)
    assert obs["query"].shape == (384,) and len(info["action_mask"]) == 85
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(int(np.flatnonzero(env.unwrapped.action_masks())[0]))
        done = terminated or truncated
    assert terminated and isinstance(info["generation"], str) and -1 <= reward <= 1
    other = gym.make("PillowMatch-v0", split="test")
    assert other.unwrapped.engine is env.unwrapped.engine  # one LLM, one engine per process
