"""The distilled single-exemplar learner: what it scores, what it learns, when it keeps kNN, and that
its choices do not flip on float noise (fast tier, stub LLM)."""

import numpy as np
import pytest

from agents import Budget, KNNAgent, load_agent, make_agent
from agents.distill import DistillAgent
from agents.single_scores import normalise_per_query
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.vector import PillowMatchVectorEnv

from .test_agents import StubGenerator, stub_reward
from .test_selection import _stub_problem


def _hits(pool, queries, best, selections):
    return np.mean([{pool[a].input for a in sel} == best[q.metadata["cls"]] for q, sel in zip(queries, selections)])


def test_distill_learns_which_single_exemplars_help_each_kind_of_query(hash_encoder, tmp_path):
    pool, queries, best, engine = _stub_problem(hash_encoder)  # one best pair per kind of query, not kNN's
    venv = PillowMatchVectorEnv(4, pool=pool, queries=queries, engine=engine, encoder=hash_encoder)
    agent = DistillAgent(candidates=12, folds=4, seed=0)
    log = agent.fit(venv, Budget(llm_calls=12 * len(queries)), progress=False)
    # Every (query, candidate) scored once, alone: one-exemplar prompts, nothing more (the stub's
    # prompts repeat across queries of a kind, so the engine sends fewer than it is asked for).
    assert log.episodes == engine.stats.requests == 12 * len(queries)
    assert log.llm_calls == engine.stats.generations <= 12 * len(queries)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    everything = list(range(len(queries)))
    knn = KNNAgent().select_many(env, everything)
    chosen = agent.select_many(env, everything)
    assert _hits(pool, queries, best, chosen) >= 0.9 > _hits(pool, queries, best, knn)
    assert log.extras["chosen_epochs"] > 0 and log.extras["chosen_temperature"] in agent.target_temperatures
    assert [agent.select(env, i) for i in everything[:5]] == chosen[:5]
    agent.save(tmp_path / "distill")
    loaded = load_agent(tmp_path / "distill")
    assert loaded.name == "distill" and loaded.select_many(env, everything) == chosen
    assert loaded.chosen_epochs == agent.chosen_epochs


def test_distill_budget_caps_the_scored_queries_and_small_budgets_are_refused(hash_encoder):
    pool, queries, best, engine = _stub_problem(hash_encoder)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    log = DistillAgent(candidates=6, epochs=2, folds=2).fit(env, Budget(llm_calls=65),
                                                                                 progress=False)
    assert log.extras["scored_queries"] == 10 and log.episodes == 60 == engine.stats.requests  # 65 // 6 queries
    with pytest.raises(ValueError, match="budget of 5 LLM calls is less than one training query's 6"):
        DistillAgent(candidates=6).fit(env, Budget(llm_calls=5), progress=False)
    one = DistillAgent(candidates=6)
    assert one.fit(env, Budget(llm_calls=6), progress=False).extras["chosen_epochs"] == 0  # nothing to validate: kNN


def test_distill_keeps_knn_when_single_scores_carry_nothing(hash_encoder):
    pool, queries, _, _ = _stub_problem(hash_encoder)
    engine = RewardEngine(StubGenerator({"fr": set(), "sum": set()}), stub_reward)  # every exemplar scores the same
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    agent = DistillAgent(candidates=6, epochs=3, folds=4)
    log = agent.fit(env, progress=False)
    assert log.extras["chosen_epochs"] == 0 and log.extras["chosen_temperature"] is None
    everything = list(range(len(queries)))
    assert agent.select_many(env, everything) == KNNAgent().select_many(env, everything)
    # The untrained network is kNN too.
    assert make_agent("distill").select_many(env, everything) == KNNAgent().select_many(env, everything)


def test_distill_choices_do_not_flip_on_float_noise(hash_encoder, monkeypatch):
    """Scores perturbed by 1e-6 change neither the setting chosen nor any selection. (The stub's scores
    are made distinct first, by a fixed offset of up to 1e-3: a real likelihood has no exact ties,
    and an exact tie is decided by pool order, which noise of any size may break.)"""
    import agents.distill as distill

    pool, queries, best, engine = _stub_problem(hash_encoder)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    everything = list(range(len(queries)))
    real, noise = distill.score_singles, np.random.default_rng(1)

    def fit(scale):
        def scored(*args, **kwargs):
            scores = real(*args, **kwargs)
            offset = 1e-3 * np.random.default_rng(0).random(scores.shape)
            return scores + offset + scale * noise.uniform(-1, 1, scores.shape)

        monkeypatch.setattr(distill, "score_singles", scored)
        agent = DistillAgent(candidates=12, folds=4, seed=0)
        log = agent.fit(env, progress=False)
        return (log.extras["chosen_temperature"], log.extras["chosen_epochs"]), agent.select_many(env, everything)

    clean = fit(0.0)
    assert clean[0][1] > 0
    for _ in range(3):
        assert fit(1e-6) == clean


def test_the_choice_rule_takes_the_smallest_setting_within_one_standard_error():
    settings = [(0.5, 1), (0.5, 2), (0.5, 3)]
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, 200)
    noise -= noise.mean()  # standard error of each row: 0.1 / sqrt(200), about 0.007
    gains = np.stack([0.104 + noise, 0.107 + noise, 0.11 + noise])  # all within one SE of the best
    assert DistillAgent._choose(gains, settings) == (0.5, 1)
    gains[0] -= 0.02  # now outside: the next smallest
    assert DistillAgent._choose(gains, settings) == (0.5, 2)
    assert DistillAgent._choose(np.stack([noise, noise, noise]), settings) is None  # no gain over kNN: keep kNN


def test_normalise_per_query_standardises_rows_and_zeros_flat_ones():
    z = normalise_per_query(np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]))
    assert np.allclose(z[0].mean(), 0) and np.allclose(z[0].std(), 1) and np.all(z[1] == 0)


def test_distill_transfers_to_another_pool_without_llm_calls(hash_encoder):
    pool, queries, best, engine = _stub_problem(hash_encoder)
    env = PillowMatchEnv(pool, queries, engine=engine, encoder=hash_encoder)
    agent = DistillAgent(candidates=12, folds=4)
    agent.fit(env, progress=False)
    calls = engine.stats.requests
    other = PillowMatchEnv(pool[::-1], queries, engine=engine, encoder=hash_encoder)  # the same entries, reordered
    moved = agent.transfer(other)
    picked = [{other.pool[a].input for a in sel} for sel in moved.select_many(other, list(range(len(queries))))]
    assert picked == [{pool[a].input for a in sel} for sel in agent.select_many(env, list(range(len(queries))))]
    assert engine.stats.requests == calls
