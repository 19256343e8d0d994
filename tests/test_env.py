import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import pillow_env  # noqa: F401  (registers PillowMatch-v0)
from pillow_env import builtin_suite
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

SUITE = builtin_suite(0)
POOL, QUERIES = SUITE.pool[:12], SUITE.train[:20]


@pytest.fixture
def engine(tiny_backbone, hash_encoder):
    return RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=4)


@pytest.fixture
def make_env(engine, hash_encoder):
    def make(**kwargs):
        return PillowMatchEnv(POOL, QUERIES, engine=engine, encoder=hash_encoder, **kwargs)
    return make


def rollout(env, seed, actions_rng):
    obs, info = env.reset(seed=seed)
    rewards, masks, queries = [], [info["action_mask"].copy()], [info["query_index"]]
    done = False
    while not done:
        action = actions_rng.choice(np.flatnonzero(env.action_masks()))
        obs, r, term, trunc, info = env.step(action)
        rewards.append(r)
        masks.append(info["action_mask"].copy())
        done = term or trunc
    return rewards, masks, queries, info


@pytest.mark.parametrize("observation", ["embedding", "index"])
def test_check_env_passes(engine, hash_encoder, observation):
    env = gym.make("PillowMatch-v0", pool=POOL, queries=QUERIES, engine=engine, encoder=hash_encoder,
                   observation=observation, render_mode="ansi")
    check_env(env.unwrapped, skip_render_check=False)


def test_episode_shape_reward_and_info(make_env):
    env = make_env(m=3, render_mode="ansi")
    obs, info = env.reset(seed=0, options={"query_index": 5})
    assert info["query_index"] == 5 and obs["step"] == 0 and obs["chosen"].sum() == 0
    assert env.observation_space.contains(obs)
    for t, action in enumerate([3, 0, 7]):
        obs, reward, term, trunc, info = env.step(action)
        assert obs["step"] == t + 1 and not trunc
        np.testing.assert_array_equal(obs["chosen"][t], env.pool_embeddings[action])
        if t < 2:
            assert reward == 0.0 and not term and "generation" not in info
    assert term and info["chosen"] == [3, 0, 7]
    assert reward == pytest.approx(info["score"]) and -1 <= reward <= 1
    assert {"prompt", "generation", "reference", "rouge_l", "semantic", "exact_match"} <= set(info)
    assert info["reference"] == QUERIES[5].output and QUERIES[5].input in info["prompt"]
    text = env.render()
    assert "query #5" in text and "pool[7]" in text and "generation" in text


def test_same_seed_same_episode(make_env):
    a = rollout(make_env(), 11, np.random.default_rng(0))
    b = rollout(make_env(), 11, np.random.default_rng(0))
    assert a[0] == b[0] and a[2] == b[2]
    assert all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))
    queries = {make_env().reset(seed=s)[1]["query_index"] for s in range(10)}
    assert len(queries) > 1


def test_masks_forbid_repeats_and_invalid_actions(make_env):
    env = make_env(m=2, invalid_action="raise")
    env.reset(seed=0)
    env.step(4)
    assert not env.action_masks()[4] and env.action_masks().sum() == len(POOL) - 1
    with pytest.raises(ValueError, match="already chosen"):
        env.step(4)
    with pytest.raises(ValueError, match="outside the pool"):
        env.step(len(POOL))

    env = make_env(m=2, invalid_action="penalize", invalid_penalty=-0.5)
    env.reset(seed=0)
    env.step(4)
    for n in range(1, 5):
        obs, reward, term, trunc, info = env.step(4)
        assert reward == -0.5 and info["invalid_action"] and obs["step"] == 1 and not term
        assert trunc == (n == 4)  # truncated after 2 * m invalid actions


def test_dense_rewards_sum_to_improvement_over_zero_shot(make_env, engine):
    env = make_env(m=3, dense=True)
    env.reset(seed=3)
    zero_shot = engine.score([([], env.query)])[0].reward
    total, done = 0.0, False
    for action in [1, 2, 3]:
        _, reward, done, _, info = env.step(action)
        assert "generation" in info
        total += reward
    assert done
    assert total == pytest.approx(info["score"] - zero_shot)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_env_matches_separate_envs(make_env, engine, hash_encoder, mode):
    n, seed = 4, 7
    venv = PillowMatchVectorEnv(n, autoreset_mode=mode, pool=POOL, queries=QUERIES, engine=engine,
                                encoder=hash_encoder)
    singles = [make_env() for _ in range(n)]
    rng = np.random.default_rng(1)
    obs, infos = venv.reset(seed=seed)
    single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    np.testing.assert_array_equal(obs["query"], np.stack([o["query"] for o in single_obs]))
    vec_rewards, single_rewards = [], []
    for _ in range(3):  # three episodes of m = 2 steps
        for _ in range(2):
            actions = np.array([rng.choice(np.flatnonzero(m)) for m in venv.action_masks()])
            obs, rewards, term, trunc, infos = venv.step(actions)
            vec_rewards.append(rewards)
            single_rewards.append([env.step(a)[1] for env, a in zip(singles, actions)])
        assert term.all()
        if mode == AutoresetMode.NEXT_STEP:
            obs, rewards, term, _, infos = venv.step(np.zeros(n, dtype=int))  # the reset step
            assert (rewards == 0).all() and not term.any() and (obs["step"] == 0).all()
        else:
            assert (obs["step"] == 0).all() and infos["_final_obs"].all()
        for env in singles:
            env.reset()
    np.testing.assert_allclose(np.array(vec_rewards), np.array(single_rewards))
    assert engine.stats.max_batch > 1
    assert venv.observation_space.contains(obs)


def test_vector_final_step_is_one_batched_call(tiny_backbone, hash_encoder):
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=4)
    venv = PillowMatchVectorEnv(6, pool=POOL, queries=QUERIES, engine=engine, encoder=hash_encoder)
    venv.reset(seed=0)
    venv.step(np.arange(6))
    assert engine.stats.requests == 0
    venv.step(np.arange(6) + 6)
    assert engine.stats.requests == 6 and engine.stats.backend_calls == 1


def test_gym_make_and_make_vec(engine, hash_encoder):
    env = gym.make("PillowMatch-v0", pool=POOL, queries=QUERIES, engine=engine, encoder=hash_encoder)
    env.reset(seed=0)
    assert env.unwrapped.action_masks().all()
    venv = gym.make_vec("PillowMatch-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        pool=POOL, queries=QUERIES, engine=engine, encoder=hash_encoder)
    assert isinstance(venv, PillowMatchVectorEnv) and venv.num_envs == 3
    obs, _ = venv.reset(seed=0)
    assert obs["chosen_mask"].shape == (3, len(POOL))


def test_bad_arguments_are_named(engine, hash_encoder):
    with pytest.raises(ValueError, match="m must be between 1 and the pool size 12"):
        PillowMatchEnv(POOL, QUERIES, engine=engine, encoder=hash_encoder, m=13)
    with pytest.raises(ValueError, match="query_index"):
        PillowMatchEnv(POOL, QUERIES, engine=engine, encoder=hash_encoder).reset(options={"query_index": 99})
    with pytest.raises(ValueError, match="split must be"):
        PillowMatchEnv("builtin", "builtin", split="dev", engine=engine, encoder=hash_encoder)
