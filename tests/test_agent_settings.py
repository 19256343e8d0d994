"""Agent settings are checked before any model loads, untrained agents say so in one line, a refused
save writes nothing, transfer takes a vector env, SB3 leaves no /tmp/SB3-* folder (issue 30, cases 9,
12, 13, 14, 15 and the SB3 part of 25)."""

import tempfile
from pathlib import Path

import pytest

from agents import Budget, ListwiseAgent, check_agent_kwargs, make_agent
from agents.selector import Selector
from pillow_env import builtin_suite
from pillow_env.bench import BenchConfig, run_bench
from pillow_env.cli import main
from pillow_env.engine import RewardEngine
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

SUITE = builtin_suite(0)
POOL, TRAIN = SUITE.pool[:10], SUITE.train[:16]


def venv(backbone, encoder, pool=POOL, n=4):
    engine = RewardEngine(backbone, PillowReward(encoder=encoder), max_new_tokens=2)
    return PillowMatchVectorEnv(n, pool=pool, queries=TRAIN, engine=engine, encoder=encoder)


@pytest.mark.parametrize("name, kwargs, message", [
    ("ppo", {"algo": "dqn"}, r"'algo' is fixed by the agent's name \(algo='ppo'\).*--agents dqn"),
    ("ppo", {"algo_kwargs": {"bogus": 1}}, r"unknown algo_kwargs bogus; PPO takes .*n_steps"),
    ("a2c", {"algo_kwargs": {"n_steps": "x"}}, r"a2c: algo_kwargs n_steps must be a whole number, got 'x'"),
    ("dqn", {"algo_kwargs": {"seed": 3}}, r"algo_kwargs may not set seed"),
    ("ppo", {"algo_kwargs": {"gamma": "high"}}, r"ppo: algo_kwargs gamma must be a number, got 'high'"),
    ("ppo", {"policy": "bogus"}, r"policy must be one of matching, MultiInputPolicy, got 'bogus'"),
    ("ppo", {"algo_kwargs": [1]}, r"algo_kwargs must be a dict"),
    ("reinforce", {"lr": "fast"}, r"lr must be like its default"),
])
def test_agent_settings_are_refused_in_one_line(name, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        check_agent_kwargs(name, kwargs)
    assert "\n" not in str(err.value)


def test_good_sb3_settings_pass():
    check_agent_kwargs("ppo", {"algo_kwargs": {"n_steps": 8, "learning_rate": 1e-3}, "policy": "MultiInputPolicy"})
    check_agent_kwargs("ppo", {"algo_kwargs": {"learning_rate": lambda progress: 1e-3 * progress}})  # a schedule


@pytest.mark.parametrize("kwargs", [{"ppo": {"algo": "dqn"}}, {"ppo": {"algo_kwargs": {"bogus": 1}}},
                                    {"ppo": {"policy": "bogus"}}])
def test_bench_refuses_bad_agent_settings_before_any_agent_runs(kwargs, tmp_path):
    out = tmp_path / "out"
    config = BenchConfig(agents=["knn", "ppo"], agent_kwargs=kwargs, out=str(out), model="./no-such-model")
    with pytest.raises(ValueError, match=r"--agent-kwargs for 'ppo'"):
        run_bench(config, progress=False)  # knn would run first, and ./no-such-model fail to load
    assert not out.exists()


@pytest.mark.parametrize("name", ["ppo", "a2c", "dqn", "maskable_ppo"])
def test_inspect_an_untrained_sb3_agent_is_one_line_before_the_llm_loads(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", "--agent", name, "--model", "./no-such-model"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "untrained SB3 agent" in err and len(err.strip().splitlines()) == 1


def test_selector_refuses_an_untrained_sb3_agent(hash_encoder):
    with pytest.raises(ValueError, match="untrained SB3 agent"):
        Selector(make_agent("ppo"), POOL, encoder=hash_encoder, renderer=object())


@pytest.mark.parametrize("name", ["ppo", "dqn", "reinforce", "listwise"])
def test_save_before_fit_writes_nothing(name, tmp_path):
    with pytest.raises(ValueError, match="nothing to save"):
        make_agent(name).save(tmp_path / "agent")
    assert not (tmp_path / "agent").exists()


def test_listwise_transfer_takes_a_vector_env(tiny_backbone, hash_encoder):
    agent = ListwiseAgent(epochs=1)
    agent.fit(venv(tiny_backbone, hash_encoder), Budget(llm_calls=24), progress=False)
    other = venv(tiny_backbone, hash_encoder, pool=SUITE.pool[10:20])
    moved = agent.transfer(other)
    assert moved.net.prompts.shape[0] == 10 and moved.pool_fingerprint != agent.pool_fingerprint
    assert len(moved.select(other.envs[0], 0)) == 2


def test_sb3_fit_leaves_no_tmp_folder_unless_tensorboard_is_asked_for(tiny_backbone, hash_encoder, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # SB3's default logger writes under gettempdir()
    make_agent("ppo").fit(venv(tiny_backbone, hash_encoder), Budget(episodes=8), progress=False)
    assert list(Path(tmp_path).glob("SB3-*")) == []
    make_agent("a2c").fit(venv(tiny_backbone, hash_encoder), Budget(episodes=8), progress=False,
                          tensorboard=tmp_path / "tb")
    assert list(Path(tmp_path).glob("SB3-*")) == [] and list((tmp_path / "tb").glob("a2c_1/events.*"))
