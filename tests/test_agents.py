import json

import numpy as np
import pytest

from agents import load_agent, Budget, ListwiseAgent, ReinforceAgent, SB3Agent, evaluate, make_agent
from pillow_env import Example, builtin_suite
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

from .conftest import in_process_agents

SUITE = builtin_suite(0)
POOL, TRAIN, TEST = SUITE.pool[:10], SUITE.train[:16], SUITE.test[:8]


@pytest.fixture
def engine(tiny_backbone, hash_encoder):
    return RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=3)


def vec(engine, encoder, n=4, **kwargs):
    return PillowMatchVectorEnv(n, pool=POOL, queries=TRAIN, engine=engine, encoder=encoder, **kwargs)


def single(engine, encoder, queries=TEST):
    return PillowMatchEnv(POOL, queries, engine=engine, encoder=encoder)


def test_unknown_agent_lists_valid_names():
    with pytest.raises(ValueError, match="valid agents: zero_shot, random, knn, bm25, mmr, dpp, reinforce, listwise, distill, rllib_ppo, ppo"):
        make_agent("sac")


@pytest.mark.parametrize("name", in_process_agents())
def test_every_agent_fits_selects_saves_and_loads(name, engine, hash_encoder, tmp_path):
    agent = make_agent(name)
    log = agent.fit(vec(engine, hash_encoder), Budget(episodes=16), progress=False)
    env = single(engine, hash_encoder)
    picks = agent.select_many(env, list(range(len(TEST))))
    for sel in picks:
        assert len(sel) == (0 if name == "zero_shot" else 2) and len(set(sel)) == len(sel)
        assert all(0 <= a < len(POOL) for a in sel)
    if agent.learns:
        assert 16 - 4 < log.episodes <= 16 and log.llm_calls >= 1  # a cap: stops before a batch exceeds it
    agent.save(tmp_path / name)
    if isinstance(agent, SB3Agent):  # SB3 zips are pickles: refused unless the caller trusts the folder
        with pytest.raises(ValueError, match="pickle.*trusted=True"):
            load_agent(tmp_path / name)
    loaded = load_agent(tmp_path / name, trusted=True)
    assert loaded.name == name
    if name != "random":  # random draws anew on every call by design
        assert loaded.select_many(env, list(range(len(TEST)))) == picks
    result = evaluate(loaded, env, progress=False)
    assert len(result.per_query) == len(TEST) and -1 <= result.means["reward"] <= 1
    assert {"selection", "generation", "reference", "rouge_l", "semantic"} <= set(result.per_query[0])


def test_knn_and_bm25_prefer_the_same_task(engine, hash_encoder):
    env = PillowMatchEnv(SUITE.pool, SUITE.test, engine=engine, encoder=hash_encoder)
    pool = env.pool
    for name in ("knn", "bm25"):
        agent = make_agent(name)
        same = [pool[a].task == env.queries[i].task for i in range(60) for a in agent.select(env, i)]
        assert np.mean(same) > 0.5, name


class StubGenerator:
    """Answers well only when the prompt holds the best pair of exemplars for the query's class."""

    fingerprint = "stub"

    def __init__(self, best):
        self.best = best
        self.renderer = self

    def render(self, exemplars, query):
        return json.dumps({"ex": sorted(e.input for e in exemplars), "cls": query.metadata["cls"]})

    def generate(self, prompts, max_new_tokens=0, *, batch_size=0, stop=()):
        out = []
        for p in prompts:
            d = json.loads(p)
            out.append(["bad", "half", "good"][len(set(d["ex"]) & self.best[d["cls"]])])
        return out

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


def stub_reward(predictions, references):
    return np.array([{"good": 1.0, "half": 0.3, "bad": 0.0}[p] for p in predictions])


def test_reinforce_learns_the_best_pair_per_query_class(hash_encoder):
    pool = [Example(f"Example number {k}.", f"p{k}", f"answer {k}") for k in range(12)]
    best = {"fr": {"p3", "p7"}, "sum": {"p1", "p10"}}
    words = ["cat", "dog", "house", "tree", "car", "book", "sun", "moon"]
    queries = ([Example("Translate the word into French.", w, "x", {"cls": "fr"}) for w in words]
               + [Example("Add the two numbers together.", f"{a} + {a + 3}", "y", {"cls": "sum"}) for a in range(8)])
    engine = RewardEngine(StubGenerator(best), stub_reward)
    venv = PillowMatchVectorEnv(16, pool=pool, queries=queries, engine=engine, encoder=hash_encoder)
    agent = ReinforceAgent(lr=3e-3, temperature=0.2, entropy_coef=0.001, seed=0)
    log = agent.fit(venv, Budget(episodes=2400), progress=False)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    optimal = [{pool[a].input for a in agent.select(env, i)} == best[q.metadata["cls"]]
               for i, q in enumerate(queries)]
    assert np.mean(optimal) >= 0.9, f"optimal selections {np.mean(optimal):.2f}; last rewards {log.history[-3:]}"
    assert log.history[-1]["reward"] > log.history[0]["reward"]


def test_reinforce_is_reproducible(engine, hash_encoder):
    logs = [ReinforceAgent(seed=3).fit(vec(engine, hash_encoder), Budget(episodes=16), progress=False)
            for _ in range(2)]
    assert [h["reward"] for h in logs[0].history] == [h["reward"] for h in logs[1].history]


@pytest.mark.parametrize("algo", ["ppo", "maskable_ppo"])
def test_sb3_trains_through_batched_generations(algo, tiny_backbone, hash_encoder):
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=3)
    agent = SB3Agent(algo)
    log = agent.fit(vec(engine, hash_encoder, n=4), Budget(episodes=32), progress=False)
    assert engine.stats.max_batch > 1 and engine.stats.backend_calls < engine.stats.generations
    assert 32 - 4 < log.episodes <= 32


def test_matching_policy_head_trains(engine, hash_encoder, tmp_path):
    agent = SB3Agent("maskable_ppo", policy="matching")
    agent.fit(vec(engine, hash_encoder), Budget(episodes=16), progress=False)
    env = single(engine, hash_encoder)
    picks = agent.select_many(env, [0, 1, 2])
    agent.save(tmp_path / "m")
    assert load_agent(tmp_path / "m", trusted=True).select_many(env, [0, 1, 2]) == picks
    with pytest.raises(ValueError, match="actor-critic"):
        SB3Agent("dqn", policy="matching")


def test_sb3_heads_saved_under_old_key_names_are_refused_naming_the_keys(engine, hash_encoder, tmp_path):
    """Heads saved before the head was a MatchingNetwork (``action_net.prompt_mlp.0.weight``) are not renamed
    on load: one line names the keys."""
    import io
    import zipfile

    import torch

    agent = SB3Agent("ppo")
    agent.fit(vec(engine, hash_encoder), Budget(episodes=16), progress=False)
    folder = agent.save(tmp_path / "ppo")
    with zipfile.ZipFile(folder / "model.zip") as z:
        files = {name: z.read(name) for name in z.namelist()}
    state = torch.load(io.BytesIO(files["policy.pth"]), weights_only=True)
    old = {k.replace("action_net.net.", "action_net.", 1).replace("_mlp.net.", "_mlp."): v for k, v in state.items()}
    assert "action_net.prompt_mlp.0.weight" in old
    buffer = io.BytesIO()
    torch.save(old, buffer)
    files["policy.pth"] = buffer.getvalue()
    with zipfile.ZipFile(folder / "model.zip", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(ValueError, match="Unexpected key\\(s\\) in state_dict: \"action_net.prompt") as err:
        load_agent(folder, trusted=True)
    assert "\n" not in str(err.value)


def test_generation_budget_is_respected(engine, hash_encoder):
    log = ReinforceAgent().fit(vec(engine, hash_encoder), Budget(llm_calls=10), progress=False)
    assert 10 - 4 < log.llm_calls <= 10  # a cap: no batch of 4 starts that could exceed it

def test_removed_names_are_refused_not_translated():
    """``generations=`` and ``signal=`` were renamed before 0.1.0: refused, naming the argument."""
    with pytest.raises(TypeError, match="generations"):
        Budget(generations=5)
    with pytest.raises(TypeError, match="generations"):
        Budget(generations=5, llm_calls=10)
    assert not hasattr(Budget(llm_calls=10), "generations")
    with pytest.raises(TypeError, match="signal"):
        ListwiseAgent(signal="env", train_reward="loglik")
    with pytest.raises(ValueError, match="unknown argument\\(s\\) signal"):
        make_agent("listwise", signal="env")


@pytest.mark.parametrize("algo", ["ppo", "a2c", "maskable_ppo"])
def test_sb3_actor_critics_start_as_knn(algo, engine, hash_encoder):
    """The same kNN-initialised matching network as REINFORCE: before any update, greedy = kNN."""
    agent = SB3Agent(algo)
    assert agent.policy == "matching" and SB3Agent("dqn").policy == "MultiInputPolicy"
    agent.fit(vec(engine, hash_encoder), Budget(episodes=4), progress=False)  # builds the model, stops before any update
    env = single(engine, hash_encoder)
    knn = make_agent("knn").select_many(env, list(range(len(TEST))))
    assert [set(s) for s in agent.select_many(env, list(range(len(TEST))))] == [set(s) for s in knn]  # kNN orders nearest last


class FavouredGenerator(StubGenerator):
    """Answers well exactly when a given pool entry is among the exemplars."""

    def generate(self, prompts, max_new_tokens=0, *, batch_size=0, stop=()):
        return ["good" if self.best in json.loads(p)["ex"] else "bad" for p in prompts]


def favoured_problem(hash_encoder):
    """Pool, queries and engine where only exemplar ``p6`` helps, a test env on them, and a function
    giving the share of the 8 queries whose selection (by an agent) includes ``p6``."""
    pool = [Example(f"Example number {k}.", f"p{k}", f"answer {k}") for k in range(10)]
    queries = [Example("Translate the word into French.", w, "x", {"cls": "fr"})
               for w in ["cat", "dog", "house", "tree", "car", "book", "sun", "moon"]]
    engine = RewardEngine(FavouredGenerator("p6"), stub_reward)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)

    def hits(agent) -> float:
        return float(np.mean(["p6" in {pool[a].input for a in sel} for sel in agent.select_many(env, range(8))]))

    return pool, queries, engine, env, hits


@pytest.mark.parametrize("algo", ["ppo", "a2c", "maskable_ppo"])
def test_sb3_actor_critics_learn_a_favoured_exemplar(algo, hash_encoder):
    pool, queries, engine, env, hits = favoured_problem(hash_encoder)
    agent = SB3Agent(algo, seed=0, algo_kwargs={"learning_rate": 3e-3})
    agent.fit(PillowMatchVectorEnv(16, pool=pool, queries=queries, engine=engine, encoder=hash_encoder),
              Budget(episodes=640), progress=False)
    knn_hits, learned = hits(make_agent("knn")), hits(agent)
    assert knn_hits < 0.5 and learned >= 0.875, f"{algo}: kNN {knn_hits:.2f}, learned {learned:.2f}"


def test_select_leaves_an_env_mid_episode_as_it_was(engine, hash_encoder):
    """Agents read the env they are handed; they never reset or step it."""
    env = single(engine, hash_encoder)
    env.reset(options={"query_index": 5})
    env.step(0)
    before = (env.query_index, list(env.chosen), env.action_masks().copy(), env.observe([env], single=True))
    fresh = single(engine, hash_encoder)
    for name in ("knn", "random", "bm25", "mmr", "dpp", "reinforce"):
        picks = make_agent(name).select(env, 0)
        assert len(picks) == 2 and (name == "random" or picks == make_agent(name).select(fresh, 0))
        assert env.query_index == before[0] == 5 and env.chosen == before[1] == [0]
        assert np.array_equal(env.action_masks(), before[2])
        after = env.observe([env], single=True)
        assert all(np.array_equal(after[k], before[3][k]) for k in after)
    assert fresh.query_index == 0 and fresh.chosen == []


def test_ppo_leaves_the_vector_env_to_the_next_learner_as_it_found_it(tiny_backbone, hash_encoder):
    """SB3's adapter wraps a SAME_STEP view; the caller's vector env keeps its autoreset mode."""
    from gymnasium.vector import AutoresetMode

    def fresh_engine():
        return RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=3)

    shared = vec(fresh_engine(), hash_encoder)
    SB3Agent("ppo").fit(shared, Budget(episodes=16), progress=False)
    assert shared.autoreset_mode == AutoresetMode.NEXT_STEP
    assert shared.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    after_ppo = ReinforceAgent(seed=3).fit(shared, Budget(episodes=16), progress=False)
    alone = ReinforceAgent(seed=3).fit(vec(fresh_engine(), hash_encoder), Budget(episodes=16), progress=False)
    assert [h["reward"] for h in after_ppo.history] == [h["reward"] for h in alone.history]
    assert after_ppo.episodes == alone.episodes
