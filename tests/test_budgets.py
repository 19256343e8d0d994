"""Budgets are caps (issue 30, cases 8 and 10): no learner spends more LLM calls or episodes than
its Budget; a budget smaller than one batch, or not a whole number >= 1, is refused in one line."""

import math

import pytest

from agents import Budget, make_agent
from pillow_env import builtin_suite
from pillow_env.engine import RewardEngine
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

SUITE = builtin_suite(0)
POOL, TRAIN = SUITE.pool[:10], SUITE.train[:16]
LEARNERS = ["reinforce", "ppo", "a2c", "maskable_ppo", "dqn", "listwise", "distill"]


def venv(backbone, encoder, n=16):
    engine = RewardEngine(backbone, PillowReward(encoder=encoder), max_new_tokens=2)
    return PillowMatchVectorEnv(n, pool=POOL, queries=TRAIN, engine=engine, encoder=encoder)


@pytest.mark.parametrize("name", LEARNERS)
def test_llm_call_budget_is_never_exceeded(name, tiny_backbone, hash_encoder):
    env = venv(tiny_backbone, hash_encoder)
    kwargs = {"epochs": 1} if name == "listwise" else {}
    log = make_agent(name, **kwargs).fit(env, Budget(llm_calls=40), progress=False)
    spent = env.engine.stats.llm_calls
    assert 1 <= spent <= 40 and log.llm_calls == spent


@pytest.mark.parametrize("name", ["reinforce", "ppo", "dqn"])
def test_episode_budget_is_never_exceeded_and_episodes_are_counted_as_run(name, tiny_backbone, hash_encoder):
    env = venv(tiny_backbone, hash_encoder, n=4)
    log = make_agent(name).fit(env, Budget(episodes=18), progress=False)
    assert 4 <= log.episodes <= 18
    assert env.engine.stats.requests >= log.episodes  # every counted episode was scored


@pytest.mark.parametrize("name", ["reinforce", "ppo", "a2c", "maskable_ppo", "dqn"])
def test_a_budget_smaller_than_one_batch_is_refused_naming_both_numbers(name, tiny_backbone, hash_encoder):
    agent = make_agent(name)
    with pytest.raises(ValueError, match=r"Budget\(episodes=8\) is smaller than one batch .*16"):
        agent.check_settings(num_envs=16, budget=Budget(episodes=8))  # what bench / train-agent check first
    env = venv(tiny_backbone, hash_encoder)
    with pytest.raises(ValueError, match=r"Budget\(llm_calls=10\) is smaller than one batch .*16"):
        agent.fit(env, Budget(llm_calls=10), progress=False)
    assert env.engine.stats.requests == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0, -3, 2.5, True, "10"])
@pytest.mark.parametrize("field", ["episodes", "llm_calls"])
def test_non_finite_zero_negative_and_non_integer_budgets_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"Budget\.{field} must be a whole number >= 1, got") as err:
        Budget(**{field: value})
    assert "\n" not in str(err.value)


def test_bench_refuses_episodes_below_num_envs_before_the_model_loads(tmp_path):
    from pillow_env.bench import BenchConfig, run_bench

    out = tmp_path / "out"
    config = BenchConfig(agents=["knn", "ppo"], episodes=8, num_envs=16, out=str(out), model="./no-such-model")
    with pytest.raises(ValueError, match=r"ppo: Budget\(episodes=8\) is smaller than one batch"):
        run_bench(config, progress=False)  # a model load would fail on ./no-such-model instead
    assert not (out / "results.json").exists()
