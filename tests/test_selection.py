"""Learning to beat retrieval: the likelihood signal, the shortlist, trajectory logs, MMR / DPP, the
listwise agent and paired statistics (tiny model and stub LLM; fast tier)."""

import json

import numpy as np
import pytest

from agents import load_agent, Budget, DPPAgent, KNNAgent, ListwiseAgent, MMRAgent, make_agent
from agents.set_ranker import SetRanker
from pillow_env import Example, builtin_suite
from pillow_env.bench import BenchConfig, run_bench
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples
from pillow_env.rewards import PillowReward
from pillow_env.stats import paired_bootstrap
from pillow_env.trajectories import example_key, read_trajectories
from pillow_env.vector import PillowMatchVectorEnv

from .conftest import in_process_agents
from .test_agents import StubGenerator, stub_reward

SUITE = builtin_suite(0)
POOL, TRAIN, TEST = SUITE.pool[:10], SUITE.train[:16], SUITE.test[:8]


@pytest.fixture
def engine(tiny_backbone, hash_encoder):
    return RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=3)


# -- likelihood signal ---------------------------------------------------------------------------

def test_loglik_signal_is_mapped_mean_logprob_and_cached_apart(tiny_backbone, hash_encoder, tmp_path):
    cache = tmp_path / "cache.sqlite"
    ll = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), signal="loglik", cache_path=cache)
    gen = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=3, cache_path=cache)
    requests = [(POOL[:2], TEST[0]), ([POOL[3]], TEST[1])]
    scored = ll.score(requests)
    prompts = [ll.render(ex, q) for ex, q in requests]
    mean = tiny_backbone.loglik(prompts, [q.output for _, q in requests], mean=True)
    total = tiny_backbone.loglik(prompts, [q.output for _, q in requests])
    n_tokens = [len(tiny_backbone.tokenizer(q.output, add_special_tokens=False)["input_ids"]) for _, q in requests]
    np.testing.assert_allclose(mean, total / np.array(n_tokens), rtol=1e-5)
    np.testing.assert_allclose([s.reward for s in scored], 2 * np.exp(mean) - 1, rtol=1e-5)
    assert all(-1 < s.reward <= 1 and s.generation == "" for s in scored)
    assert ll.stats.loglik_passes == 2 and ll.stats.generations == 0 and ll.stats.llm_calls == 2
    assert ll.fingerprint != gen.fingerprint
    gen.score(requests)  # same prompts, same cache file: the generation signal is never served a likelihood
    assert gen.stats.generations == 2 and gen.stats.disk_hits == 0


def test_loglik_needs_a_backend_that_can_score():
    class NoScoring:
        fingerprint, renderer = "x", None

    with pytest.raises(ValueError, match="cannot score likelihoods"):
        RewardEngine(NoScoring(), stub_reward, signal="loglik")
    with pytest.raises(ValueError, match="signal must be one of generate, loglik"):
        RewardEngine(NoScoring(), stub_reward, signal="beam")


def test_env_trains_on_loglik(tiny_backbone, hash_encoder):
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), signal="loglik")
    env = PillowMatchEnv(POOL, TRAIN, engine=engine, encoder=hash_encoder)
    env.reset(seed=0)
    env.step(0)
    _, reward, terminated, _, info = env.step(1)
    assert terminated and -1 < reward <= 1 and "mean_logprob" in info
    with pytest.raises(ValueError, match="reward must be None, 'pillow', 'loglik' or a callable"):
        PillowMatchEnv(POOL, TRAIN, engine=engine, encoder=hash_encoder, reward="bleu")


# -- shortlist -----------------------------------------------------------------------------------

def test_candidates_restrict_the_action_mask(engine, hash_encoder):
    env = PillowMatchEnv(POOL, TEST, engine=engine, encoder=hash_encoder, candidates=3, invalid_action="raise")
    _, info = env.reset(options={"query_index": 2})
    keys = hash_encoder.encode([e.instruction + ("\n\n" + e.input if e.input else "") for e in POOL])
    nearest = np.argsort(-(keys @ env.query_embeddings[2]), kind="stable")[:3]
    assert set(np.flatnonzero(info["action_mask"])) == set(nearest)
    outside = int(np.flatnonzero(~info["action_mask"])[0])
    with pytest.raises(ValueError, match="not among the query's 3 candidates"):
        env.step(outside)
    penalizing = PillowMatchEnv(POOL, TEST, engine=engine, encoder=hash_encoder, candidates=3)
    penalizing.reset(options={"query_index": 2})
    _, reward, _, _, info = penalizing.step(outside)
    assert reward == -1.0 and info["invalid_action"] and penalizing.chosen == []
    with pytest.raises(ValueError, match="candidates must be None or at least m=2"):
        PillowMatchEnv(POOL, TEST, engine=engine, encoder=hash_encoder, candidates=1)


@pytest.mark.parametrize("name", [n for n in in_process_agents() if n != "zero_shot"])
def test_every_agent_honours_the_shortlist(name, engine, hash_encoder):
    agent = make_agent(name)
    if agent.learns:
        venv = PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=engine, encoder=hash_encoder, candidates=3)
        agent.fit(venv, Budget(episodes=16), progress=False)
    env = PillowMatchEnv(POOL, TEST, engine=engine, encoder=hash_encoder, candidates=3)
    for i, sel in enumerate(agent.select_many(env, list(range(len(TEST))))):
        assert set(sel) <= set(env.shortlists[i].tolist()) and len(set(sel)) == 2, (name, i, sel)


# -- MMR and DPP ---------------------------------------------------------------------------------

def test_mmr_with_full_relevance_is_knn_and_diversity_avoids_near_duplicates(engine, hash_encoder):
    env = PillowMatchEnv(SUITE.pool, SUITE.test, engine=engine, encoder=hash_encoder)
    queries = list(range(20))
    assert MMRAgent(lam=1.0).select_many(env, queries) == KNNAgent().select_many(env, queries)
    # A pool whose two most relevant entries are copies of each other (up to a trailing space): kNN
    # takes both, MMR and DPP take one of them and something else.
    twin = Example("Reverse the letters of this word.", "apple", "elppa")
    pool = [twin, Example(twin.instruction + " ", twin.input, twin.output),
            Example("Reverse the letters of the given word.", "river", "revir"),
            Example("Translate the word into French.", "cat", "chat"),
            Example("Add the two numbers.", "2 + 3", "5")]
    env = PillowMatchEnv(pool, [Example("Reverse the letters of this word.", "candle", "eldnac")], engine=engine,
                         encoder=hash_encoder)
    assert sorted(KNNAgent().select(env, 0)) == [0, 1]
    for agent in (MMRAgent(), DPPAgent()):
        picks = agent.select(env, 0)
        assert len({0, 1} & set(picks)) == 1, (agent.name, picks)
    with pytest.raises(ValueError, match="lam must be in"):
        MMRAgent(lam=2.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        DPPAgent(scale=0)


# -- trajectory log ------------------------------------------------------------------------------

def test_every_scored_episode_is_logged_and_read_back_by_content(engine, hash_encoder, tmp_path):
    log = tmp_path / "runs" / "trajectories.jsonl"
    engine = RewardEngine(engine.generator, engine.reward, max_new_tokens=3, log_path=log)
    venv = PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=engine, encoder=hash_encoder)
    venv.reset(seed=0)
    venv.step([0, 1, 2, 3])
    _, rewards, terminated, _, _ = venv.step([4, 5, 6, 7])
    assert terminated.all()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 4 and all(r["fingerprint"] == engine.fingerprint for r in records)
    with open(log, "a") as f:
        f.write('{"query": "damaged, killed mid-li')
    shuffled_pool = POOL[::-1]  # a reordered pool still matches: records name content, not indices
    read = read_trajectories(log, shuffled_pool, TRAIN, fingerprint=engine.fingerprint)
    assert len(read) == 4
    for env, t, r in zip(venv.envs, sorted(read, key=lambda t: records.index(next(
            x for x in records if x["query"] == example_key(TRAIN[t.query_index])
            and x["exemplars"] == [example_key(shuffled_pool[i]) for i in t.exemplars]))), rewards):
        assert [shuffled_pool[i] for i in t.exemplars] == [POOL[i] for i in env.chosen]
        assert t.query_index == env.query_index and t.reward == pytest.approx(r)
    assert read_trajectories(log, POOL, TRAIN, fingerprint="another model") == []


# -- listwise agent ------------------------------------------------------------------------------

def _stub_problem(hash_encoder, best=None):
    pool = [Example(f"Example number {k}.", f"p{k}", f"answer {k}") for k in range(12)]
    best = best or {"fr": {"p3", "p7"}, "sum": {"p1", "p10"}}
    words = ["cat", "dog", "house", "tree", "car", "book", "sun", "moon", "bird", "lamp"]
    queries = ([Example("Translate the word into French.", w, "x", {"cls": "fr"}) for w in words]
               + [Example("Add the two numbers together.", f"{a} + {a + 3}", "y", {"cls": "sum"}) for a in range(10)])
    engine = RewardEngine(StubGenerator(best), stub_reward)
    return pool, queries, best, engine


def test_listwise_matching_network_learns_query_dependent_best_pairs_and_beats_knn(hash_encoder, tmp_path,
                                                                                   monkeypatch):
    pool, queries, best, engine = _stub_problem(hash_encoder)  # each kind of query has its own best pair
    venv = PillowMatchVectorEnv(4, pool=pool, queries=queries, engine=engine, encoder=hash_encoder)
    agent = ListwiseAgent(candidates=12, epochs=60, seed=0)
    log = agent.fit(venv, Budget(llm_calls=600), progress=False)
    assert log.episodes <= 600 and log.llm_calls == engine.stats.llm_calls == engine.stats.generations <= 600
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    optimal = [{pool[a].input for a in agent.select(env, i)} == best[q.metadata["cls"]] for i, q in enumerate(queries)]
    knn = [{pool[a].input for a in KNNAgent().select(env, i)} == best[q.metadata["cls"]] for i, q in enumerate(queries)]
    assert np.mean(optimal) >= 0.9 > np.mean(knn), (np.mean(optimal), np.mean(knn), log.extras["epochs"])
    assert log.extras["chosen_epochs"] > 0 and log.extras["validation_gain"]["low"] > 0  # out-of-fold paired gain over kNN
    agent.save(tmp_path / "lw")
    loaded = load_agent(tmp_path / "lw")
    assert loaded.name == "listwise" and loaded.select_many(env, list(range(6))) == agent.select_many(env, range(6))
    everything = list(range(len(queries)))
    with monkeypatch.context() as patch:  # too many sets to rank: one member at a time
        patch.setattr("agents.listwise.MAX_ENUMERATED_SETS", 0)
        greedy = [{pool[a].input for a in sel} == best[queries[i].metadata["cls"]]
                  for i, sel in enumerate(agent.select_many(env, everything))]
    assert np.mean(greedy) >= 0.9
    agent.margin = 1e9  # no departure from kNN is sure enough
    assert agent.select_many(env, everything) == KNNAgent().select_many(env, everything)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        ListwiseAgent(margin=-1)
    with pytest.raises(ValueError, match="model must be one of"):
        ListwiseAgent(model="mlp")


def test_listwise_linear_ranker_learns_which_exemplars_help_every_query(hash_encoder, tmp_path, monkeypatch):
    # The same pair is best for every query, and kNN does not find it: a bias per pool entry can learn it.
    best = {"fr": {"p3", "p7"}, "sum": {"p3", "p7"}}
    pool, queries, best, engine = _stub_problem(hash_encoder, best)
    venv = PillowMatchVectorEnv(4, pool=pool, queries=queries, engine=engine, encoder=hash_encoder)
    agent = ListwiseAgent(candidates=12, seed=0, model="linear")
    log = agent.fit(venv, Budget(llm_calls=400), progress=False)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    everything = list(range(len(queries)))

    def hits(selections):
        return np.mean([{pool[a].input for a in sel} == {"p3", "p7"} for sel in selections])

    assert agent.model == "linear" and isinstance(agent.net, SetRanker) and agent.margin == 0
    assert hits(agent.select_many(env, everything)) >= 0.9 > hits(KNNAgent().select_many(env, everything))
    assert log.extras["chosen_penalty"] in agent.penalties and log.extras["validation_gain"]["low"] > 0
    agent.save(tmp_path / "ranker")
    loaded = load_agent(tmp_path / "ranker")
    assert isinstance(loaded.net, SetRanker)
    assert loaded.select_many(env, everything) == agent.select_many(env, everything)
    monkeypatch.setattr("agents.listwise.MAX_ENUMERATED_SETS", 0)  # too many sets: one member at a time
    assert hits(agent.select_many(env, everything)) >= 0.9
    monkeypatch.undo()
    with pytest.raises(ValueError, match="penalties must be"):
        ListwiseAgent(penalties=[0.0])


def test_listwise_scores_knns_set_and_distinct_shortlist_sets_per_query(hash_encoder, tmp_path):
    pool, queries, best, _ = _stub_problem(hash_encoder)
    log_path = tmp_path / "explored.jsonl"
    engine = RewardEngine(StubGenerator(best), stub_reward, log_path=log_path)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    agent = ListwiseAgent(candidates=8, epochs=1, seed=0)
    log = agent.fit(env, Budget(llm_calls=8 * len(queries)), progress=False)
    assert log.episodes == log.extras["scored_sets"] == engine.stats.requests == 8 * len(queries)
    explored = read_trajectories(log_path, pool, queries, fingerprint=engine.fingerprint)
    knn = KNNAgent().select_many(env, list(range(len(queries))))
    sims = embed_examples(hash_encoder, pool, with_output=False) @ env.query_embeddings.T
    for q in range(len(queries)):
        sets = [tuple(t.exemplars) for t in explored if t.query_index == q]
        shortlist = set(np.argsort(-sims[:, q], kind="stable")[:8].tolist())
        assert len(sets) == len(set(sets)) == 8 and all(set(s) <= shortlist for s in sets)
        assert tuple(knn[q]) in sets  # kNN's set, in kNN's prompt order, is always scored


@pytest.mark.parametrize("model", ["linear", "matching"])
def test_listwise_falls_back_to_knn_when_learning_does_not_help(hash_encoder, model):
    pool, queries, _, _ = _stub_problem(hash_encoder)
    engine = RewardEngine(StubGenerator({"fr": set(), "sum": set()}), stub_reward)  # every set scores the same
    venv = PillowMatchVectorEnv(4, pool=pool, queries=queries, engine=engine, encoder=hash_encoder)
    agent = ListwiseAgent(candidates=6, epochs=3, seed=0, model=model)
    log = agent.fit(venv, Budget(llm_calls=100), progress=False)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    assert log.extras["chosen_penalty"] is None and log.extras["chosen_epochs"] == (0 if model == "matching" else None)
    assert agent.select_many(env, list(range(len(queries)))) == KNNAgent().select_many(env, list(range(len(queries))))


def test_listwise_trains_on_logged_episodes(hash_encoder, tmp_path):
    pool, queries, best, _ = _stub_problem(hash_encoder)
    log_path = tmp_path / "trajectories.jsonl"
    engine = RewardEngine(StubGenerator(best), stub_reward, log_path=log_path)
    venv = PillowMatchVectorEnv(4, pool=pool, queries=queries, engine=engine, encoder=hash_encoder)
    ListwiseAgent(candidates=12, epochs=1, seed=1).fit(venv, Budget(llm_calls=300), progress=False)
    logged = len(log_path.read_text().splitlines())
    agent = ListwiseAgent(candidates=12, epochs=1, seed=0, logs=[str(log_path)])
    log = agent.fit(venv, Budget(llm_calls=60), progress=False)
    assert log.extras["scored_sets"] > 60 and logged >= 250


def test_folders_saved_with_removed_options_are_refused_naming_the_key(engine, hash_encoder, tmp_path):
    import json

    from agents import ReinforceAgent

    venv = PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=engine, encoder=hash_encoder)
    for agent, removed in ((ListwiseAgent(epochs=1), {"balanced": False, "refine": 0.0, "explore_temperature": None,
                                                      "signal": "env"}),
                           (ReinforceAgent(), {"pretrain": 0.0})):
        agent.fit(venv, Budget(episodes=16), progress=False)
        folder = agent.save(tmp_path / agent.name)
        record = json.loads((folder / "agent.json").read_text())
        assert load_agent(folder).name == agent.name
        for key, value in removed.items():  # even at the value that once meant "off"
            (folder / "agent.json").write_text(json.dumps({**record, "config": {**record["config"], key: value}}))
            with pytest.raises(ValueError, match=f"agent.json: config does not fit agent '{agent.name}': "
                                                 f"unknown argument\\(s\\) {key};") as err:
                load_agent(folder)
            assert "\n" not in str(err.value)


def test_listwise_trains_on_the_envs_reward_as_every_learner_does(tiny_backbone, hash_encoder, tiny_model_dir,
                                                                    tmp_path):
    """One training signal: the env's reward (bench: ``train_reward``), the same for every learner."""
    loglik = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), signal="loglik")
    log = ListwiseAgent(epochs=2).fit(PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=loglik,
                                                           encoder=hash_encoder), Budget(llm_calls=48), progress=False)
    assert loglik.stats.generations == 0 and loglik.stats.loglik_passes == log.llm_calls == 48
    generate = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=2)
    log = ListwiseAgent(epochs=1).fit(PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=generate,
                                                           encoder=hash_encoder), Budget(llm_calls=40), progress=False)
    assert generate.stats.loglik_passes == 0 and 0 < generate.stats.generations == log.llm_calls == log.episodes <= 40
    with pytest.raises(TypeError, match="train_reward"):
        ListwiseAgent(train_reward="loglik")
    for train_reward in ("pillow", "loglik"):  # bench's option is honoured, not overridden by listwise
        results = run_bench(BenchConfig(agents=["listwise"], model=str(tiny_model_dir), test_limit=2, train_limit=6,
                                        episodes=12, max_new_tokens=2, train_reward=train_reward,
                                        out=str(tmp_path / train_reward)), progress=False)
        train = results.get("train_engine", results["engine"])
        assert (train["loglik_passes"] > 0) == (train_reward == "loglik")
        assert results["engine"]["loglik_passes"] == 0  # evaluation always generates
        record = results["agents"]["listwise"]
        assert record["llm_calls"] == record["train_llm_calls"] + record["eval_llm_calls"]
        assert 0 < record["train_llm_calls"] == train["llm_calls"] - (train_reward == "pillow") * record["eval_llm_calls"]


# -- paired statistics ---------------------------------------------------------------------------

def test_paired_bootstrap_interval():
    constant = paired_bootstrap([0.1] * 30)
    assert constant["mean"] == pytest.approx(0.1) and constant["low"] == pytest.approx(0.1) == constant["high"]
    rng = np.random.default_rng(0)
    noisy = paired_bootstrap(rng.normal(0.05, 0.1, 400))
    assert noisy["low"] < noisy["mean"] < noisy["high"] and noisy["low"] > 0 and noisy["n"] == 400
    with pytest.raises(ValueError, match="no differences"):
        paired_bootstrap([])


def test_listwise_transfers_to_another_pool_without_llm_calls(hash_encoder, tmp_path):
    pool = [Example(f"Example number {k}.", f"p{k}", f"answer {k}") for k in range(10)]
    queries = [Example("Translate the word into French.", w, "x") for w in ["cat", "dog", "house", "tree"]]
    env = PillowMatchEnv(pool, queries, encoder=hash_encoder)  # no LLM is loaded: selection never scores
    other = PillowMatchEnv(SUITE.pool[:12], SUITE.test[:6], encoder=hash_encoder)
    agent = make_agent("listwise")
    agent.prepare(env)
    with pytest.raises(ValueError, match="different exemplar pool"):
        agent.select_many(other, [0])
    moved = agent.transfer(other)
    assert moved.net.prompts.shape[0] == 12 and agent.net.prompts.shape[0] == 10  # the original is untouched
    knn = make_agent("knn").select_many(other, list(range(6)))
    assert [set(s) for s in moved.select_many(other, list(range(6)))] == [set(s) for s in knn]  # kNN start carries over
    linear = make_agent("listwise", model="linear")
    linear.prepare(env)
    with pytest.raises(ValueError, match="does not carry over"):
        linear.transfer(other)


def test_listwise_transfers_after_fit_with_a_disk_cache(tiny_backbone, hash_encoder, tmp_path):
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=2,
                          cache_path=tmp_path / "cache.sqlite")
    agent = make_agent("listwise", folds=2)
    agent.fit(PillowMatchVectorEnv(4, pool=SUITE.pool[:10], queries=SUITE.train[:8], engine=engine,
                                   encoder=hash_encoder), Budget(llm_calls=24), progress=False)
    other = PillowMatchEnv(SUITE.pool[10:22], SUITE.test[:4], encoder=hash_encoder)
    assert len(agent.transfer(other).select_many(other, [0, 1, 2, 3])) == 4
