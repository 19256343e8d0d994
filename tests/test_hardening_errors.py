"""Second hardening pass, errors: every bad input is one line naming the file, field or argument,
exit 2, before any model loads where it can be checked first; env actions are integers in the space."""

import json

import numpy as np
import pytest

from agents import Agent, load_agent, Budget, make_agent
from pillow_env import builtin_suite
from pillow_env.bench import BenchConfig, run_bench
from pillow_env.cli import build_parser, main
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

SUITE = builtin_suite(0)
POOL, TRAIN = SUITE.pool[:8], SUITE.train[:8]


def no_llm(*args, **kwargs):
    raise AssertionError("the LLM was loaded before the input was checked")


@pytest.fixture
def llm_forbidden(monkeypatch):
    import pillow_env.resources as resources

    monkeypatch.setattr(resources, "shared_backend", no_llm)


def cli_error(capsys, argv) -> str:
    """Run the CLI, expect exit code 2, return what it printed on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def trained(tiny_backbone, hash_encoder, tmp_path):
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=2)
    agent = make_agent("reinforce", hidden=16)
    agent.fit(PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=engine, encoder=hash_encoder),
              Budget(episodes=4), progress=False)
    return agent.save(tmp_path / "agent")


def _edit(folder, **changes):
    record = json.loads((folder / "agent.json").read_text())
    record["config"].update(changes)
    (folder / "agent.json").write_text(json.dumps(record))


@pytest.mark.parametrize("damage, message", [
    ({"hidden": "big"}, "hidden must be like its default"),
    ({"hidden": 32}, "saved weights do not load"),
    ("truncate", "saved weights do not load"),
    ({"pool_fingerprint": None}, "'pool_fingerprint' is null"),
])
def test_damaged_agent_folders_fail_in_one_line(trained, damage, message):
    if damage == "truncate":
        weights = next(p for p in trained.iterdir() if p.suffix == ".safetensors")
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        _edit(trained, **damage)
    with pytest.raises(ValueError, match=message):
        load_agent(trained)


def test_bad_agent_kwargs_fail_before_the_model_loads(tmp_path, capsys, llm_forbidden):
    assert "lr must be like its default" in cli_error(capsys, [
        "bench", "--agents", "knn,reinforce", "--agent-kwargs", '{"reinforce": {"lr": "fast"}}',
        "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        main(["train-agent", "--agent", "reinforce", "--agent-kwargs", '{"reinforce": {"hidden": 1.5}}',
              "--out", str(tmp_path / "a")])
    assert "hidden must be like its default" in capsys.readouterr().err


def test_inspect_checks_the_query_index_before_loading_the_llm(capsys, llm_forbidden):
    assert "--query-index must be in [0, 119), got 999" in cli_error(capsys, ["inspect", "--query-index", "999"])


def test_bad_numbers_and_references_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--episodes", "lots"])
    assert "argument --episodes: expected a whole number >= 1, got 'lots'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--reference bm25 is not among --agents"):
        run_bench(BenchConfig(agents=["zero_shot", "knn"], reference="bm25", out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_loglik_training_against_a_server_that_cannot_score_fails_before_any_agent(tiny_model_dir, tmp_path):
    from .test_openai_backend import Stub  # noqa: F401  (the scripted server)
    import threading
    from http.server import ThreadingHTTPServer

    state = {"lock": threading.Lock(), "requests": [], "auth": set(), "open": 0, "max_open": 0, "script": []}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (Stub,), {"state": state}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        model = f"openai:http://127.0.0.1:{server.server_port}/v1#stub-model#{tiny_model_dir}"
        with pytest.raises(Exception, match="cannot score likelihoods"):
            run_bench(BenchConfig(agents=["knn", "listwise"], model=model, train_reward="loglik", test_limit=2,
                                  out=str(tmp_path / "o"), max_new_tokens=2), progress=False)
        assert not (tmp_path / "o" / "results.json").exists()  # kNN was not evaluated first
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("action", [1.7, "2", True, np.float32(1.0), [1, 2]])
def test_env_actions_must_be_integers_in_the_space(hash_encoder, tiny_backbone, action):
    env = PillowMatchEnv(POOL, TRAIN, encoder=hash_encoder,
                         engine=RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=2))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be an integer"):
        env.step(action)
    env.step(np.int64(1))  # numpy integers are fine, as in Discrete
    with pytest.raises(ValueError, match="query_index'\\] must be an integer"):
        env.reset(options={"query_index": 1.5})


def test_pool_or_queries_without_answers_are_refused(hash_encoder, tmp_path):
    from pillow_env.data import DataError, Example

    empty = [Example(e.instruction, e.input, "") for e in POOL]
    with pytest.raises(DataError, match="pool: every record's output is empty"):
        PillowMatchEnv(empty, TRAIN, encoder=hash_encoder)
    with pytest.raises(DataError, match="--test: every record's output is empty"):
        run_bench(BenchConfig(agents=["knn"], test=_file(tmp_path, empty), out=str(tmp_path / "o")))


def _file(tmp_path, examples):
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in examples))
    return str(path)


def test_global_options_after_the_subcommand_and_defaults_in_help(capsys):
    args = build_parser().parse_args(["bench", "--threads", "1", "--debug"])
    assert args.threads == 1 and args.debug is True
    args = build_parser().parse_args(["--threads", "2", "bench"])
    assert args.threads == 2 and args.debug is False
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2)" in text and "else 24)" in text and "listwise" in text and "maskable_ppo" in text


def test_loading_by_type(tmp_path):
    from agents import KNNAgent, ListwiseAgent, ReinforceAgent

    folder = make_agent("knn").save(tmp_path / "knn")
    assert isinstance(load_agent(folder), KNNAgent) and isinstance(KNNAgent.load(folder), KNNAgent)
    with pytest.raises(ValueError, match="holds a saved 'knn' agent, not a ListwiseAgent"):
        ListwiseAgent.load(folder)
    with pytest.raises(ValueError, match="not a ReinforceAgent"):
        ReinforceAgent.load(folder)
    with pytest.raises(ValueError, match="holds a saved 'knn' agent, not a Agent; load it with agents.load_agent"):
        Agent.load(folder)  # the base class does not dispatch: load_agent does


def test_rllib_weights_of_the_other_policy_are_refused_not_switched(tmp_path):
    """Weights without the matching network's ``net.prompts`` do not silently turn the agent into the MLP."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "agent.json").write_text(json.dumps({"agent": "rllib_ppo", "config": {"pool_fingerprint": "x"}}))
    save_file({"pi.net.0.weight": torch.zeros(2, 2)}, str(folder / "rllib_module.safetensors"))
    with pytest.raises(ValueError, match="holds an MLP \\(no 'net.prompts' key\\), but agent.json says "
                                         "policy='matching'"):
        load_agent(folder)


def test_unknown_agent_arguments_are_named_everywhere(tmp_path, capsys, llm_forbidden):
    assert "unknown argument(s) bogus" in cli_error(capsys, [
        "train-agent", "--agent", "reinforce", "--agent-kwargs", '{"reinforce": {"bogus": 1}}',
        "--out", str(tmp_path / "a")])


def test_splits_never_overwrite_a_single_run(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text('{"settings": {}, "agents": {}}')
    with pytest.raises(ValueError, match="not the pooled summary"):
        run_bench(BenchConfig(agents=["knn"], splits=2, out=str(out)))
    assert (out / "results.json").read_text() == '{"settings": {}, "agents": {}}'
