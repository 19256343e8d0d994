"""``Selector`` options practitioners ask for (fast tier): the chosen exemplars' scores per input, a token
budget for the exemplars, and a metadata filter applied as an action mask before selection."""

import numpy as np
import pytest

from agents import Budget, make_agent
from agents.base import Agent
from agents.selector import Selector
from pillow_env import Example, builtin_suite
from pillow_env.backends.openai_chat import ChatRenderer
from pillow_env.engine import RewardEngine
from pillow_env.resources import embed_examples
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

SUITE = builtin_suite(0)
POOL, TRAIN = SUITE.pool[:12], SUITE.train[:16]
QUERIES = ["Give a word with the opposite meaning.", Example("Reverse the letters of this word.", "stone")]


def selector(hash_encoder, renderer, agent="knn", **kwargs):
    return Selector(make_agent(agent) if isinstance(agent, str) else agent, POOL, encoder=hash_encoder,
                    renderer=renderer, **kwargs)


def test_every_selection_shows_its_exemplars_similarity_to_the_query(tiny_backbone, hash_encoder):
    keys = embed_examples(hash_encoder, POOL, with_output=False)
    for s in selector(hash_encoder, tiny_backbone.renderer).select(QUERIES):
        query = embed_examples(hash_encoder, [s.query], with_output=False)[0]
        np.testing.assert_allclose(s.scores, keys[s.indices] @ query, rtol=1e-6)
        assert s.scores == sorted(s.scores) and s.to_dict()["scores"] == s.scores  # kNN: nearest last


def test_a_token_budget_drops_the_least_similar_exemplars_until_they_fit(tiny_backbone, hash_encoder):
    tok = tiny_backbone.tokenizer
    full = selector(hash_encoder, tiny_backbone.renderer).select(QUERIES)
    for s in full:
        sizes = [sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in
                     [f"{e.instruction}\n\n{e.input}" if e.input else e.instruction, e.output]) for e in s.exemplars]
        budget = max(sizes)  # room for the larger one alone, not for both
        (cut,) = selector(hash_encoder, tiny_backbone.renderer, exemplar_budget=budget).select([s.query])
        assert cut.indices == [s.indices[-1]] and cut.dropped == [s.indices[0]]  # the nearest stays
        assert cut.to_dict()["dropped"] == cut.dropped and len(cut.prompt) < len(s.prompt)
    (none,) = selector(hash_encoder, tiny_backbone.renderer, exemplar_budget=0).select(QUERIES[:1])
    assert none.indices == [] and len(none.dropped) == 2
    with pytest.raises(ValueError, match="exemplar_budget must be None or >= 0"):
        selector(hash_encoder, tiny_backbone.renderer, exemplar_budget=-1)


def test_without_a_tokenizer_the_budget_counts_characters(hash_encoder):
    renderer = ChatRenderer()
    (s,) = selector(hash_encoder, renderer).select(QUERIES[:1])
    chars = [len(e.instruction + ("\n\n" + e.input if e.input else "")) for e in s.exemplars]
    budget = sum(-(-c // 4) + -(-len(e.output) // 4) for c, e in zip(chars, s.exemplars))
    assert selector(hash_encoder, renderer, exemplar_budget=budget).select(QUERIES[:1])[0].indices == s.indices
    assert len(selector(hash_encoder, renderer, exemplar_budget=budget - 1).select(QUERIES[:1])[0].indices) == 1
    assert s.messages[1]["content"] == s.exemplars[0].output  # the chat renderer's messages, as a chat API takes


@pytest.mark.parametrize("agent", ["knn", "bm25", "random", "reinforce"])
def test_a_metadata_filter_masks_the_other_entries_before_selection(agent, tiny_backbone, hash_encoder):
    picker = make_agent(agent)
    if picker.learns:
        engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=3)
        picker.fit(PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=engine, encoder=hash_encoder),
                   Budget(episodes=8), progress=False)
    sel = selector(hash_encoder, tiny_backbone.renderer, picker)
    for s in sel.select(QUERIES, where={"task": ["antonym", "topic"]}):
        assert {e.metadata["task"] for e in s.exemplars} <= {"antonym", "topic"} and len(s.indices) == 2
    (only,) = sel.select(QUERIES[1:], where={"task": "antonym"})
    assert sorted(only.indices) == [i for i, e in enumerate(POOL) if e.metadata["task"] == "antonym"]


def test_bad_filters_and_agents_that_ignore_the_mask_are_clear_errors(tiny_backbone, hash_encoder):
    sel = selector(hash_encoder, tiny_backbone.renderer)
    with pytest.raises(ValueError, match="where: no pool entry has the field 'category' \\(fields: input, "):
        sel.select(QUERIES, where={"category": "summarization"})
    with pytest.raises(ValueError, match="'first_letter'}: 1 pool entries match, fewer than the 2"):
        sel.select(QUERIES, where={"task": "first_letter"})

    class FirstTwo(Agent):  # picks without looking at the action mask
        name = "first_two"

        def select(self, env, query_index):
            return [0, 1]

    with pytest.raises(ValueError, match=r"the first_two agent picked pool entries outside the filter \(\[0\]\)"):
        selector(hash_encoder, tiny_backbone.renderer, FirstTwo()).select(QUERIES, where={"task": "antonym"})
