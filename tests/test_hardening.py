"""Bad input gets a one-line answer naming the file, field or argument, before any long work (fast tier).

The README's input/behaviour catalogue is this file; the cache cases are in test_cache.py, the
long query in test_prompts.py, untrusted agent folders in test_agents.py / test_selector.py.
"""

import json

import pytest

from pillow_env import DataError, Example, builtin_suite, load_examples
from pillow_env.cli import main
from pillow_env.env import PillowMatchEnv

SUITE = builtin_suite(0)


def cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the error")


@pytest.fixture
def forbid_model(monkeypatch):
    import pillow_env.resources as resources

    monkeypatch.setattr(resources, "shared_backend", no_model)


def test_bench_settings_are_checked_before_the_model_loads(forbid_model, tmp_path, capsys):
    bad = '{"knn": {"k": 3}}'
    assert "--agent-kwargs for 'knn'" in cli_error(capsys, ["bench", "--agents", "knn", "--agent-kwargs", bad,
                                                            "--out", str(tmp_path / "a")])
    message = cli_error(capsys, ["bench", "--agents", "knn,reinforce", "--num-envs", "3", "--out", str(tmp_path / "b")])
    assert "num_envs (3) must be a multiple of group_size (4)" in message
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "is a file, not a folder" in cli_error(capsys, ["bench", "--agents", "knn", "--out", str(afile)])
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "results.json").write_text("{not json")
    message = cli_error(capsys, ["bench", "--agents", "knn", "--out", str(corrupt)])
    assert f"{corrupt / 'results.json'} is not a results file" in message
    assert (corrupt / "results.json").read_text() == "{not json"  # nothing overwritten
    assert "is a directory" in cli_error(capsys, ["bench", "--agents", "knn", "--out", str(tmp_path / "c"),
                                                  "--cache", str(tmp_path)])


def test_the_debug_flag_shows_the_traceback(forbid_model, tmp_path):
    with pytest.raises(ValueError, match="--agent-kwargs for 'knn'"):
        main(["--debug", "bench", "--agents", "knn", "--agent-kwargs", '{"knn": {"k": 3}}', "--out", str(tmp_path)])


def test_models_and_adapters_are_named_in_errors(tiny_model_dir, tmp_path):
    from pillow_env.backends.hf import Backbone

    with pytest.raises(FileNotFoundError, match="model './missing-dir': no such folder"):
        Backbone.from_pretrained("./missing-dir")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ValueError, match=f"model '{not_a_model}' could not be loaded as a Hugging Face causal LM"):
        Backbone.from_pretrained(str(not_a_model))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{garbage")
    with pytest.raises(ValueError, match="adapter_config.json: not valid JSON"):
        Backbone.from_pretrained(str(tiny_model_dir), adapter=str(adapter))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "NOT_A_TYPE", "r": 8}))
    with pytest.raises(ValueError, match="unknown peft_type 'NOT_A_TYPE'"):
        Backbone.from_pretrained(str(tiny_model_dir), adapter=str(adapter))


def test_data_files_in_odd_encodings_and_shapes(tmp_path):
    records = [{"instruction": "Reverse the word.", "input": w, "output": w[::-1]} for w in ["fig", "pear"]]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in records).encode())
    assert [e.input for e in load_examples(bom)] == ["fig", "pear"]
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(json.dumps(records[0]).encode() + b"\n" + '{"instruction": "Caf\xe9", "output": "x"}\n'.encode(
        "latin-1"))
    with pytest.raises(DataError, match=f"{latin}:2: not UTF-8 text"):
        load_examples(latin)
    assert [e.input for e in load_examples(latin, on_error="skip")] == ["fig"]
    pretty = tmp_path / "pretty.jsonl"
    pretty.write_text(json.dumps(records, indent=2))
    assert [e.input for e in load_examples(pretty)] == ["fig", "pear"]


def test_train_backbone_rejects_negative_steps(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train-backbone", "--max-steps", "-3", "--out", str(tmp_path / "a")])
    assert "--max-steps: must be >= 1, got -3" in capsys.readouterr().err


def test_repeated_pool_records_are_dropped_with_a_warning(hash_encoder):
    pool = SUITE.pool[:6] + [SUITE.pool[2], SUITE.pool[4]]
    with pytest.warns(UserWarning, match=r"pool: dropped 2 repeated record\(s\) \(e.g. record 6 repeats record 2\)"):
        env = PillowMatchEnv(pool, SUITE.test[:3], encoder=hash_encoder)
    assert env.pool == SUITE.pool[:6]
    from agents import make_agent

    for picks in make_agent("knn").select_many(env, [0, 1, 2]):
        assert len({(env.pool[i].instruction, env.pool[i].input) for i in picks}) == 2


def test_step_after_the_episode_ended_is_a_clear_error(hash_encoder, tiny_backbone):
    from pillow_env.engine import RewardEngine
    from pillow_env.rewards import PillowReward

    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=2)
    env = PillowMatchEnv(SUITE.pool[:5], SUITE.test[:2], engine=engine, encoder=hash_encoder)
    env.reset(seed=0)
    env.step(0)
    env.step(1)
    with pytest.raises(RuntimeError, match=r"step\(\) after the episode ended \(2 exemplars chosen\); call reset"):
        env.step(2)


def test_unknown_fields_of_a_saved_agent_are_named(tmp_path):
    from agents import load_agent

    folder = tmp_path / "agent"
    folder.mkdir()
    (folder / "agent.json").write_text(json.dumps({"agent": "knn", "config": {"neighbours": 3}}))
    with pytest.raises(ValueError, match="config does not fit agent 'knn'"):
        load_agent(folder)
    (folder / "agent.json").write_text("{oops")
    with pytest.raises(ValueError, match="agent.json: not valid JSON"):
        load_agent(folder)
    with pytest.raises(FileNotFoundError, match="not a saved agent folder"):
        load_agent(tmp_path / "nothing")


def test_examples_accept_new_queries_without_answers(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text('{"instruction": "Reverse the word.", "input": "fig"}\n')
    with pytest.raises(DataError, match="missing field 'output'"):
        load_examples(path)
    assert load_examples(path, require_output=False) == [Example("Reverse the word.", "fig", "")]


def test_agent_kwargs_may_set_the_agent_seed():
    from agents import make_seeded_agent

    assert make_seeded_agent("listwise", 0, seed=3).seed == 3
    assert make_seeded_agent("listwise", 5).seed == 5
