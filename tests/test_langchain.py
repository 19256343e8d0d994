"""A trained selector inside LangChain's few-shot prompts, with the real ``langchain-core``: the string and
chat forms, ``add_example`` semantics, metadata filters. Fast tier on the tiny model's tokenizer and
the hash encoder; the real tier on MiniLM and SmolLM2's tokenizer (no LLM is ever loaded)."""

import pytest

pytest.importorskip("langchain_core")

from langchain_core.prompts import (ChatPromptTemplate, FewShotChatMessagePromptTemplate,  # noqa: E402
                                    FewShotPromptTemplate, PromptTemplate)

from agents import Budget, make_agent  # noqa: E402
from agents.langchain import PillowExampleSelector  # noqa: E402
from agents.selector import Selector  # noqa: E402
from pillow_env import Example, builtin_suite  # noqa: E402
from pillow_env.engine import RewardEngine  # noqa: E402
from pillow_env.rewards import PillowReward  # noqa: E402
from pillow_env.vector import PillowMatchVectorEnv  # noqa: E402

SUITE = builtin_suite(0)
POOL, TRAIN = SUITE.pool[:12], SUITE.train[:16]
QUERY = {"instruction": "Is the animal a mammal, bird, fish or reptile?", "input": "shark"}


def string_prompt(selector):
    return FewShotPromptTemplate(example_selector=selector,
                                 example_prompt=PromptTemplate.from_template("{instruction}\n{input}\n{output}"),
                                 suffix="{instruction}\n{input}\n", input_variables=["instruction", "input"])


@pytest.fixture
def trained_listwise(tiny_backbone, hash_encoder, tmp_path):
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=3)
    agent = make_agent("listwise")
    agent.fit(PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=engine, encoder=hash_encoder),
              Budget(episodes=16), progress=False)
    return agent.save(tmp_path / "listwise")


def test_the_issue_snippet_prints_a_prompt_with_the_agents_two_exemplars(trained_listwise, tiny_backbone,
                                                                         hash_encoder):
    options = {"encoder": hash_encoder, "renderer": tiny_backbone.renderer}
    selector = PillowExampleSelector.load(trained_listwise, pool=POOL, **options)
    text = string_prompt(selector).format(**QUERY)
    chosen = selector.last_selection
    direct = Selector.load(trained_listwise, pool=POOL, **options).select(Example(**QUERY))[0]
    assert len(chosen.indices) == 2 and chosen.indices == direct.indices  # the agent's own choice
    for e in chosen.exemplars:
        assert f"{e.instruction}\n{e.input}\n{e.output}" in text
    assert text.endswith(f"{QUERY['instruction']}\n{QUERY['input']}\n")


def test_the_chat_form_gives_the_exemplars_as_earlier_turns(tiny_backbone, hash_encoder):
    selector = PillowExampleSelector(make_agent("knn"), pool=POOL, encoder=hash_encoder,
                                     renderer=tiny_backbone.renderer)
    few_shot = FewShotChatMessagePromptTemplate(
        example_selector=selector, input_variables=["instruction", "input"],
        example_prompt=ChatPromptTemplate.from_messages([("human", "{instruction}\n\n{input}"), ("ai", "{output}")]))
    prompt = ChatPromptTemplate.from_messages([few_shot, ("human", "{instruction}\n\n{input}")])
    messages = prompt.format_messages(**QUERY)
    knn = Selector(make_agent("knn"), POOL, encoder=hash_encoder, renderer=tiny_backbone.renderer).select(
        [selector.last_selection.query])[0]
    assert [m.type for m in messages] == ["human", "ai", "human", "ai", "human"]
    assert [m.content for m in messages[1:4:2]] == [e.output for e in knn.exemplars]
    assert messages[-1].content == f"{QUERY['instruction']}\n\n{QUERY['input']}"


def test_add_example_extends_a_retrievers_pool_and_is_refused_for_a_learned_agent(trained_listwise, tiny_backbone,
                                                                                  hash_encoder):
    options = {"encoder": hash_encoder, "renderer": tiny_backbone.renderer}
    knn = PillowExampleSelector(make_agent("knn"), pool=POOL, **options)
    new = {"instruction": QUERY["instruction"], "input": "eagle", "output": "bird", "category": "animals"}
    index = knn.add_example(new)
    assert index == len(POOL) and knn.add_example(new) == index  # added once
    picked = knn.select_examples(QUERY)
    assert picked[-1] == new  # the nearest, next to the query, with its metadata
    learned = PillowExampleSelector.load(trained_listwise, pool=POOL, **options)
    with pytest.raises(ValueError, match="add_example: the listwise agent was trained on this pool .* retrain"):
        learned.add_example(new)
    assert len(learned.selector.pool) == len(POOL)
    with pytest.raises(ValueError, match="input variables .* hold no 'instruction'"):
        knn.select_examples({"question": "shark"})


def test_a_metadata_filter_binds_the_langchain_selector(tiny_backbone, hash_encoder):
    selector = PillowExampleSelector(make_agent("knn"), pool=POOL, where={"task": "antonym"}, encoder=hash_encoder,
                                     renderer=tiny_backbone.renderer)
    assert [e["task"] for e in selector.select_examples(QUERY)] == ["antonym", "antonym"]
    with pytest.raises(ValueError, match="where: no pool entry has the field 'categry'"):
        PillowExampleSelector(make_agent("knn"), pool=POOL, where={"categry": "x"}, encoder=hash_encoder,
                              renderer=tiny_backbone.renderer)


@pytest.mark.real
def test_langchain_prompt_on_the_builtin_pool_with_minilm_and_smollm2s_tokenizer():
    selector = PillowExampleSelector(make_agent("knn"), pool="builtin")
    text = string_prompt(selector).format(**QUERY)
    chosen = selector.last_selection
    assert len(chosen.exemplars) == 2 and all(e.output in text for e in chosen.exemplars)
    assert chosen.scores == sorted(chosen.scores) and all(-1 <= s <= 1 for s in chosen.scores)  # nearest last
