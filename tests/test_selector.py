"""Using a trained selector on new queries: ``Selector`` and ``pillow-env select`` (fast tier)."""

import io
import json
import sys

import pytest

from agents import load_agent, Budget, SB3Agent, make_agent
from agents.selector import Selector
from pillow_env import DataError, Example, builtin_suite
from pillow_env import resources
from pillow_env.cli import main
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.prompts import PromptRenderer
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

from .conftest import in_process_agents

SUITE = builtin_suite(0)
POOL, TRAIN = SUITE.pool[:10], SUITE.train[:16]
NEW = ["Reverse the letters of this word.", Example("Give the plural of the noun.", "wolf"),
       Example("What is 3 + 4?")]


def no_llm(*args, **kwargs):
    raise AssertionError("selection loaded the LLM")


def forbid_llm(monkeypatch):
    import pillow_env.env as env_module

    for module in (resources, env_module):
        monkeypatch.setattr(module, "shared_backend", no_llm)
        monkeypatch.setattr(module, "shared_engine", no_llm)


@pytest.fixture
def saved_agents(tiny_backbone, hash_encoder, tmp_path):
    """Every registered agent (and the listwise one with its linear ranker), trained briefly on the tiny
    model and saved."""
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=3)
    folders = {}
    for name in [*in_process_agents(), "listwise-linear"]:
        agent = make_agent("listwise", model="linear") if name == "listwise-linear" else make_agent(name)
        if agent.learns:
            venv = PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=engine, encoder=hash_encoder)
            agent.fit(venv, Budget(episodes=8), progress=False)
        folders[name] = agent.save(tmp_path / name)
    return folders


def test_every_saved_agent_selects_for_new_queries_without_an_llm(saved_agents, tiny_backbone, hash_encoder,
                                                                  monkeypatch):
    forbid_llm(monkeypatch)
    renderer = tiny_backbone.renderer
    for name, folder in saved_agents.items():
        trusted = name != "listwise-linear" and isinstance(make_agent(name), SB3Agent)
        selector = Selector.load(folder, POOL, trusted=trusted, encoder=hash_encoder, renderer=renderer)
        out = selector.select(NEW)
        assert len(out) == 3, name
        for sel, query in zip(out, NEW):
            assert sel.query.instruction == (query if isinstance(query, str) else query.instruction)
            assert len(sel.indices) == (0 if name == "zero_shot" else 2) and len(set(sel.indices)) == len(sel.indices)
            assert sel.exemplars == [POOL[i] for i in sel.indices]
            assert sel.prompt == renderer.render(sel.exemplars, sel.query)
            assert sel.messages[-1] == {"role": "user", "content": sel.query.instruction +
                                        (f"\n\n{sel.query.input}" if sel.query.input else "")}
        if name != "random":  # the same choices as the agent makes through an env over these queries
            env = PillowMatchEnv(POOL, [Example(q) if isinstance(q, str) else q for q in NEW], encoder=hash_encoder)
            agent = load_agent(folder, trusted=trusted)
            assert [s.indices for s in out] == agent.select_many(env, [0, 1, 2]), name


def test_a_selector_refuses_a_foreign_pool_and_bad_queries(saved_agents, tiny_backbone, hash_encoder):
    for name in ("reinforce", "listwise", "ppo"):
        with pytest.raises(ValueError, match="trained on a different exemplar pool"):
            Selector.load(saved_agents[name], SUITE.pool[10:20], trusted=True, encoder=hash_encoder,
                          renderer=tiny_backbone.renderer)
    selector = Selector.load(saved_agents["knn"], POOL, encoder=hash_encoder, renderer=tiny_backbone.renderer)
    with pytest.raises(DataError, match="query 1: the instruction is empty"):
        selector.select(["Reverse the word.", "  "])
    with pytest.raises(ValueError, match="trained to pick 2"):
        Selector.load(saved_agents["reinforce"], POOL, shots=3, encoder=hash_encoder, renderer=tiny_backbone.renderer)
    with pytest.raises(ValueError, match="pickle.*trusted=True"):
        Selector.load(saved_agents["ppo"], POOL, encoder=hash_encoder, renderer=tiny_backbone.renderer)


def test_env_loads_no_llm_until_a_reward_is_due(hash_encoder, monkeypatch):
    forbid_llm(monkeypatch)
    env = PillowMatchEnv(POOL, TRAIN, model="some/unloaded-model", encoder=hash_encoder, candidates=4)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["action_mask"].sum() == 4
    env.step(int(info["action_mask"].argmax()))  # not the last step: no reward due, no model
    venv = PillowMatchVectorEnv(3, pool=POOL, queries=TRAIN, encoder=hash_encoder)
    venv.reset(seed=0)
    assert make_agent("knn").select_many(env, [0, 1]) and venv.action_masks().shape == (3, 10)
    assert len(env.chosen) == 1  # selection read the env; it did not reset or step it
    with pytest.raises(AssertionError, match="loaded the LLM"):  # the last step needs the reward
        env.step(int(env.action_masks().argmax()))


def _cli(monkeypatch, tiny_backbone, argv, stdin=None):
    import agents.selector as selector_module

    monkeypatch.setattr(selector_module, "load_renderer", lambda model: tiny_backbone.renderer)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    main(argv)


def test_select_cli_file_and_stdin(saved_agents, tiny_backbone, hash_encoder, tmp_path, monkeypatch, capsys):
    import pillow_env.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "load_encoder", lambda *a, **k: hash_encoder)
    import agents.selector as selector_module

    monkeypatch.setattr(selector_module, "load_encoder", lambda *a, **k: hash_encoder)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in POOL))
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"instruction": "Reverse the letters of this word.", "input": "garden"}\n'
                       '{"instruction": "Name the capital of the country.", "input": "Peru"}\n')
    out = tmp_path / "out.jsonl"
    _cli(monkeypatch, tiny_backbone, ["select", "--agent-dir", str(saved_agents["reinforce"]), "--pool", str(pool),
                                      "--queries", str(queries), "--out", str(out)])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["query"]["input"] for x in lines] == ["garden", "Peru"]
    assert all(len(x["indices"]) == 2 and x["exemplars"][0] == POOL[x["indices"][0]].to_dict() for x in lines)
    assert all(x["prompt"].endswith("<|im_start|>assistant\n") and x["messages"] for x in lines)

    _cli(monkeypatch, tiny_backbone, ["select", "--agent-dir", str(saved_agents["knn"]), "--pool", str(pool),
                                      "--queries", "-"],
         stdin='"Reverse the letters of this word."\n\n{"instruction": "Add the numbers.", "input": "2 + 2"}\n')
    streamed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["query"]["instruction"] for x in streamed] == ["Reverse the letters of this word.", "Add the numbers."]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"instruction": "ok", \n')
    for argv, stdin, message in [
        (["--queries", str(bad)], None, f"{bad}:2: invalid JSON"),
        (["--queries", "-"], '{"instruction": "fine"}\n{"input": "no instruction"}\n', "<stdin>:2: missing field"),
        (["--queries", "-"], '{"instruction": ""}\n', "<stdin>:1: field 'instruction' is empty"),
        (["--queries", str(tmp_path / "missing.jsonl")], None, "dataset file not found"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            _cli(monkeypatch, tiny_backbone, ["select", "--agent-dir", str(saved_agents["knn"]), "--pool", str(pool),
                                              *argv], stdin=stdin)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(monkeypatch, tiny_backbone, ["select", "--agent-dir", str(saved_agents["listwise"]), "--pool", "builtin",
                                          "--queries", str(queries)])
    assert "trained on a different exemplar pool" in capsys.readouterr().err


def test_renderer_messages_match_render(tiny_backbone, tiny_alpaca_backbone):
    exemplars, query = POOL[:2], Example("Reverse the letters of this word.", "garden")
    chat = tiny_backbone.renderer
    assert chat.tokenizer.apply_chat_template(chat.messages(exemplars, query), tokenize=False,
                                              add_generation_prompt=True) == chat.render(exemplars, query)
    assert PromptRenderer(tiny_alpaca_backbone.tokenizer).messages(exemplars, query) is None
