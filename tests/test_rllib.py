"""Ray RLlib glue: env config round trip and wrapper (no Ray needed), then PPO on real Ray worker
processes with the tiny model, then (real tier) 2 env runners sharing a real ``transformers serve``."""

import json
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from agents import load_agent, Budget, make_agent
from pillow_env import builtin_suite
from pillow_env.backends import load_backend
from pillow_env.bench import BenchConfig, run_bench
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.rewards import PillowReward
from pillow_env.rllib import ENV_CONFIG_KEYS, MaskedObservation, make_env
from .test_agents import StubGenerator, favoured_problem, stub_reward

SUITE = builtin_suite(0)
POOL = [e.to_dict() for e in SUITE.pool[:12]]
TRAIN = [e.to_dict() for e in SUITE.train[:10]]


class Context(dict):
    """What RLlib hands an env creator: the config plus the runner's indices."""

    def __init__(self, config, worker_index, vector_index=0):
        super().__init__(config)
        self.worker_index, self.vector_index = worker_index, vector_index


@pytest.fixture
def named_env(tiny_model_dir, tmp_path):
    return PillowMatchEnv(POOL, TRAIN, model=str(tiny_model_dir), encoder="minilm", candidates=4,
                          cache_path=tmp_path / "cache.sqlite", max_new_tokens=3)


def test_env_config_rebuilds_the_same_env_in_plain_data(named_env):
    config = named_env.config()
    assert json.loads(json.dumps(config)) == config  # plain data: picklable, loggable
    copy = PillowMatchEnv(**config)
    assert copy.pool == named_env.pool and copy.queries == named_env.queries
    assert np.array_equal(copy.shortlists, named_env.shortlists)
    a, _ = named_env.reset(options={"query_index": 3})
    b, _ = copy.reset(options={"query_index": 3})
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_env_config_comes_from_a_named_engine_and_refuses_objects(tiny_backbone, tiny_model_dir, hash_encoder):
    backend = load_backend(str(tiny_model_dir))
    env = PillowMatchEnv(POOL, TRAIN, engine=RewardEngine(backend, PillowReward(encoder="minilm"), signal="loglik"),
                         encoder=hash_encoder)
    config = env.config()
    assert config["model"] == str(tiny_model_dir) and config["reward"] == "loglik" and config["encoder"] == "minilm"
    unnamed = PillowMatchEnv(POOL, TRAIN, engine=RewardEngine(tiny_backbone, PillowReward(encoder="minilm")),
                             encoder=hash_encoder)
    with pytest.raises(ValueError, match="was not loaded by name"):
        unnamed.config()
    weighted = PillowMatchEnv(POOL, TRAIN, encoder=hash_encoder,
                              engine=RewardEngine(backend, PillowReward(text_weight=1.0, encoder="minilm")))
    with pytest.raises(ValueError, match="only the default PillowReward"):
        weighted.config()


def test_env_creator_wraps_checks_and_names_the_runner_log(named_env, tmp_path):
    config = {**named_env.config(), "trajectory_dir": str(tmp_path / "logs")}
    env = make_env(Context(config, worker_index=2))
    assert isinstance(env, MaskedObservation)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["action_mask"].sum() == 4  # the shortlist
    valid = int(np.flatnonzero(obs["action_mask"])[0])
    obs, *_ = env.step(valid)
    assert obs["action_mask"][valid] == 0 and obs["action_mask"].sum() == 3
    env.step(int(np.flatnonzero(obs["action_mask"])[0]))
    assert (tmp_path / "logs" / "runner-2-0.jsonl").is_file()
    replicas = ["openai:http://127.0.0.1:1/v1#a", "openai:http://127.0.0.1:2/v1#a"]
    spread = [make_env(Context({**config, "model": replicas, "adapter": None}, worker_index=w)).unwrapped
              for w in (1, 2, 3)]
    assert [e.config()["model"] for e in spread] == [replicas[0], replicas[1], replicas[0]]
    with pytest.raises(ValueError, match="unknown key.*'modle'"):
        make_env({**config, "modle": "x"})
    assert set(named_env.config()) <= set(ENV_CONFIG_KEYS)


def test_without_ray_the_agent_says_which_extra_before_any_work(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"pip install 'pillow-env\[rllib\]'"):
        make_agent("rllib_ppo").check_settings(num_envs=16)


# -- on Ray ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.rllib")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def assert_masked(module, batch, algorithm):
    """Every forward pass (APPO's target policy too) puts no probability on masked actions; one value per row."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS

    mask = batch[Columns.OBS]["action_mask"]
    outputs = [module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS],
               module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]]
    if algorithm == "APPO":  # the target policy behind APPO's importance ratios is masked too
        module.make_target_networks()
        outputs.append(module.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS])
    for logits in outputs:
        probs = torch.softmax(logits, -1)
        assert torch.all(probs[mask == 0] == 0) and torch.allclose(probs.sum(-1), torch.ones(len(mask)))
    assert module.compute_values(batch).shape == (len(mask),)


@pytest.mark.parametrize("algorithm", ["PPO", "APPO"])
def test_masked_module_puts_no_probability_on_invalid_actions(ray_local, algorithm):
    import torch
    from gymnasium import spaces
    from ray.rllib.core.columns import Columns

    from pillow_env.rllib import module_spec

    space = spaces.Dict({"observations": spaces.Box(-1, 1, (6,), np.float32),
                         "action_mask": spaces.Box(0, 1, (5,), np.float32)})
    module = module_spec((8,), space, spaces.Discrete(5), algorithm=algorithm).build()
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.float32)
    batch = {Columns.OBS: {"observations": torch.randn(2, 6), "action_mask": mask}}
    assert_masked(module, batch, algorithm)
    with pytest.raises(ValueError, match="'observations' and 'action_mask'"):
        module_spec((8,), space["observations"], spaces.Discrete(5), algorithm=algorithm).build()
    with pytest.raises(ValueError, match="algorithm must be one of PPO, IMPALA, APPO, got 'DQN'"):
        module_spec(algorithm="DQN")


@pytest.mark.parametrize("algorithm", ["PPO", "APPO"])
def test_matching_module_masks_and_starts_as_knn(ray_local, algorithm, hash_encoder):
    """The rllib_ppo agent's default module: the kNN-initialised matching network, masked."""
    import torch
    from ray.rllib.core.columns import Columns

    from agents.base import check_pool
    from agents.rllib_matching import matching_module_spec
    from pillow_env.resources import embed_examples

    env = PillowMatchEnv(SUITE.pool, SUITE.test[:20], engine=RewardEngine(StubGenerator({}), stub_reward),
                         encoder=hash_encoder, candidates=6)
    space = MaskedObservation(env).observation_space
    prompts = embed_examples(env.encoder, env.pool, with_output=False)
    module = matching_module_spec(prompts, observation_space=space, action_space=env.action_space,
                                  algorithm=algorithm).build()
    obs = [MaskedObservation(env).observation(env.reset(options={"query_index": i})[0]) for i in range(3)]
    batch = {Columns.OBS: {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}}
    assert_masked(module, batch, algorithm)

    agent = make_agent("rllib_ppo")
    assert agent.policy == "matching"
    agent.state = {k: torch.as_tensor(np.asarray(v)) for k, v in module.get_state().items()}
    agent.pool_fingerprint = check_pool(env, None)
    knn = make_agent("knn").select_many(env, range(20))
    assert [set(s) for s in agent.select_many(env, range(20))] == [set(s) for s in knn]
    with pytest.raises(ValueError, match="policy must be 'matching' or 'mlp'"):
        make_agent("rllib_ppo", policy="cnn")


def test_rllib_ppo_matching_module_learns_a_favoured_exemplar(ray_local, hash_encoder):
    """On a stub LLM that answers well only when one given pool entry is shown, PPO with the matching
    module learns to show it (env runner in this process: the stub cannot be rebuilt by name)."""
    import torch
    from ray.tune.registry import register_env

    from agents.base import check_pool
    from agents.rllib_matching import matching_module_spec
    from pillow_env import rllib
    from pillow_env.resources import embed_examples

    pool, queries, engine, env, hits = favoured_problem(hash_encoder)
    spec = matching_module_spec(embed_examples(hash_encoder, pool, with_output=False))
    register_env("favoured-stub", lambda _: MaskedObservation(PillowMatchEnv(pool, queries, engine=engine,
                                                                             encoder=hash_encoder)))
    config = (rllib.ppo_config({}, num_env_runners=0, train_batch_size=64, minibatch_size=32, lr=3e-3,
                               rl_module_spec=spec)
              .environment("favoured-stub"))
    algo = config.build_algo()
    try:
        for _ in range(20):  # 20 x 32 = 640 episodes, as the SB3 algorithms get
            algo.train()
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in algo.get_module().get_state().items()}
    finally:
        algo.stop()
    agent = make_agent("rllib_ppo")
    agent.state, agent.pool_fingerprint = state, check_pool(env, None)
    knn_hits, learned = hits(make_agent("knn")), hits(agent)
    assert knn_hits < 0.5 and learned >= 0.875, f"rllib_ppo: kNN {knn_hits:.2f}, learned {learned:.2f}"


def test_appo_learns_from_runners_that_never_send_an_invalid_action(ray_local, named_env, tmp_path):
    from pillow_env import rllib

    config = rllib.appo_config(named_env.config() | {"trajectory_dir": str(tmp_path / "logs")},
                               num_env_runners=2, train_batch_size=32, hiddens=(16,))
    algo = config.build_algo()
    results = []
    try:  # APPO is asynchronous: on a busy machine the first iterations may end before any episode
        while len(results) < 10 and (len(results) < 2 or "pillow" not in results[-1]["env_runners"]):
            results.append(algo.train())
    finally:
        algo.stop()
    pillow = results[-1]["env_runners"]["pillow"]
    assert pillow["episodes_runner_1"] > 0 and pillow["episodes_runner_2"] > 0
    assert pillow["scored"] == pillow["episodes_runner_1"] + pillow["episodes_runner_2"]  # none cut short
    learned = [r["learners"]["default_policy"] for r in results if "default_policy" in r.get("learners", {})]
    assert learned and all(np.isfinite(r["total_loss"]) for r in learned)


def test_rllib_ppo_trains_on_two_runners_shares_the_cache_and_reloads(ray_local, named_env, tmp_path):
    small = {"train_batch_size": 32, "minibatch_size": 16, "num_epochs": 1}
    agent = make_agent("rllib_ppo", trajectory_dir=str(tmp_path / "logs"), **small)
    log = agent.fit(named_env, Budget(episodes=48), progress=False)
    assert log.episodes >= 16 and log.llm_calls >= 1
    assert set(log.extras["episodes_per_runner"]) == {"episodes_runner_1", "episodes_runner_2"}
    assert all(n > 0 for n in log.extras["episodes_per_runner"].values())
    assert set(log.extras["peak_rss_mb"]) == {"peak_rss_mb_runner_1", "peak_rss_mb_runner_2"}
    assert all(mb > 50 for mb in log.extras["peak_rss_mb"].values())  # a real process's resident memory, in MB
    logged = sorted(p.name for p in (tmp_path / "logs").glob("*.jsonl"))
    assert logged == ["runner-1-0.jsonl", "runner-2-0.jsonl"]
    # The same seed replays the same first episodes: a second agent finds them in the shared disk cache.
    again = make_agent("rllib_ppo", **small).fit(named_env, Budget(episodes=16), progress=False)
    assert again.extras["cached"] > 0 and again.llm_calls < again.episodes

    test = PillowMatchEnv(POOL, [e.to_dict() for e in SUITE.test[:6]], model=str(named_env.config()["model"]),
                          encoder="minilm", candidates=4)
    picks = agent.select_many(test, list(range(6)))
    assert all(set(p) <= set(test.shortlists[i].tolist()) and len(set(p)) == 2 for i, p in enumerate(picks))
    agent.save(tmp_path / "agent")
    assert load_agent(tmp_path / "agent").select_many(test, list(range(6))) == picks  # no pickle involved
    with pytest.raises(ValueError, match="more than the budget"):
        make_agent("rllib_ppo").fit(named_env, Budget(episodes=8), progress=False)


def test_bench_includes_rllib_ppo_with_its_runner_llm_calls(ray_local, tiny_model_dir, tmp_path):
    kwargs = {"rllib_ppo": {"train_batch_size": 32, "minibatch_size": 16, "num_epochs": 1}}
    results = run_bench(BenchConfig(agents=["knn", "rllib_ppo"], model=str(tiny_model_dir), out=str(tmp_path / "b"),
                                    test_limit=4, episodes=32, max_new_tokens=3, agent_kwargs=kwargs),
                        progress=False)
    record = results["agents"]["rllib_ppo"]
    assert record["episodes"] >= 16 and record["train_llm_calls"] >= 1
    assert "rllib_ppo" in results["paired"] and (tmp_path / "b" / "agents" / "rllib_ppo" / "agent.json").is_file()


# -- real tier: two runners, one real server --------------------------------------------------------

@pytest.mark.real
def test_two_runners_share_a_real_server_and_its_cache(ray_local, tmp_path):
    from pillow_env.backends.hf import resolve_model
    from pillow_env.backends.local_server import LocalServer
    from pillow_env.trajectories import read_trajectories

    cache = tmp_path / "cache.sqlite"
    with LocalServer(resolve_model("smollm2-135m-instruct"), log=tmp_path / "serve.log", threads=1) as server:
        env = PillowMatchEnv(SUITE.pool, SUITE.train, model=server.spec, cache_path=cache, candidates=8)
        small = {"train_batch_size": 32, "minibatch_size": 16, "num_epochs": 1, "model": server.spec}
        agent = make_agent("rllib_ppo", trajectory_dir=str(tmp_path / "logs"), **small)
        log = agent.fit(env, Budget(episodes=32), progress=False)
        assert set(log.extras["episodes_per_runner"]) == {"episodes_runner_1", "episodes_runner_2"}
        assert all(n > 0 for n in log.extras["episodes_per_runner"].values()) and log.llm_calls > 0
        # Every runner's rewards came from the server: its episodes carry the server engine's fingerprint.
        server_fp = env.engine.fingerprint
        for runner in ("runner-1-0.jsonl", "runner-2-0.jsonl"):
            episodes = read_trajectories(tmp_path / "logs" / runner, env.pool, env.queries, fingerprint=server_fp)
            assert episodes and all(-1 <= t.reward <= 1 for t in episodes)
        assert "/v1/completions" in (tmp_path / "serve.log").read_text(errors="replace")
        # A second run replays the first episodes (same seed) from the cache the runners share.
        again = make_agent("rllib_ppo", **small).fit(env, Budget(episodes=16), progress=False)
        assert again.extras["cached"] > 0 and again.llm_calls < again.episodes


@pytest.mark.real
def test_example_rllib_ppo_trains_and_evaluates_through_its_own_server(ray_local, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "rllib_ppo.py"
    spec = importlib.util.spec_from_file_location("rllib_ppo_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(episodes=32, runners=2, out=str(tmp_path / "run"), test_limit=4, train_batch_size=32)
    assert list(results["agents"]) == ["knn", "rllib_ppo"] and results["settings"]["model"].startswith("openai:")
    record = results["agents"]["rllib_ppo"]
    assert record["episodes"] >= 16 and record["train_llm_calls"] > 0 and len(record["per_query"]) == 4
    assert "rllib_ppo" in results["paired"] and "/v1/completions" in (tmp_path / "run" / "server.log").read_text()
