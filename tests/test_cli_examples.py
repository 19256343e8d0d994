"""The front door on the tiny model: `pillow-env bench` outputs, resume, CLI errors, and every example."""

import importlib.util
import json
from pathlib import Path

import pytest

from pillow_env.bench import BenchConfig, run_bench
from pillow_env.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
AGENT_KEYS = {"reward", "rouge_l", "semantic", "exact_match", "llm_calls", "train_llm_calls",
              "eval_llm_calls", "wall_seconds", "per_query", "curve", "episodes"}


def example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_writes_json_markdown_and_plot(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    results = run_bench(BenchConfig(agents=["zero_shot", "knn", "reinforce"], model=str(tiny_model_dir),
                                    episodes=16, out=str(out), test_limit=6, max_new_tokens=4), progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert saved["agents"].keys() == {"zero_shot", "knn", "reinforce"} == results["agents"].keys()
    for record in saved["agents"].values():
        assert AGENT_KEYS <= set(record) and len(record["per_query"]) == 6
        assert {"selection", "generation", "reference"} <= set(record["per_query"][0])
    assert saved["agents"]["reinforce"]["train_llm_calls"] > 0 and saved["agents"]["reinforce"]["curve"]
    table = (out / "results.md").read_text()
    assert "| knn |" in table and "| reinforce |" in table
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "agents" / "reinforce" / "agent.json").is_file()


def test_interrupted_bench_resumes_without_recomputing(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    config = BenchConfig(agents=["zero_shot", "knn", "random"], model=str(tiny_model_dir), episodes=8,
                         out=str(out), test_limit=4, max_new_tokens=4)
    import agents

    real, real_evaluate = agents.make_seeded_agent, agents.evaluate
    built, interrupted = [], []

    def recording(name, seed, **kwargs):
        built.append(name)
        return real(name, seed, **kwargs)

    def interrupt_at_random(agent, *args, **kwargs):
        if agent.name == "random" and not interrupted:
            interrupted.append(agent.name)
            raise KeyboardInterrupt("killed during the third agent")
        return real_evaluate(agent, *args, **kwargs)

    monkeypatch.setattr(agents, "evaluate", interrupt_at_random)
    monkeypatch.setattr(agents, "make_seeded_agent", recording)
    with pytest.raises(KeyboardInterrupt):
        run_bench(config, progress=False)
    kept = json.loads((out / "results.json").read_text())["agents"]
    assert list(kept) == ["zero_shot", "knn"]
    built.clear()
    results = run_bench(config, progress=False)
    assert built == ["random"]  # finished agents were not rebuilt, trained or evaluated again
    assert results["agents"]["knn"] == kept["knn"]

    with pytest.raises(ValueError, match="different shots"):
        run_bench(BenchConfig(**{**config.__dict__, "shots": 3}), progress=False)


def test_cli_errors_are_clear(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["bench", "--agents", "knn,sac"])
    err = capsys.readouterr().err
    assert "unknown agent(s) sac" in err and "valid agents: zero_shot, random, knn, bm25, mmr, dpp, reinforce" in err
    with pytest.raises(SystemExit):
        main(["bench", "--pool", str(tmp_path / "missing.jsonl")])
    assert f"file not found: {tmp_path / 'missing.jsonl'}" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    with pytest.raises(SystemExit):
        main(["bench", "--pool", str(bad), "--out", str(tmp_path / "o")])
    assert "bad.jsonl:1: missing field 'output'" in capsys.readouterr().err


def test_inspect_prints_the_whole_story(tiny_model_dir, capsys):
    main(["inspect", "--model", str(tiny_model_dir), "--agent", "knn", "--query-index", "3",
          "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    for part in ("agent: knn", "query #3", "exemplar 1: pool[", "exemplar 2: pool[", "--- rendered prompt ---",
                 "generation:", "reference:", "rouge_l"):
        assert part in out


def test_train_agent_saves(tiny_model_dir, tmp_path, capsys):
    main(["train-agent", "--model", str(tiny_model_dir), "--agent", "reinforce", "--episodes", "16",
          "--num-envs", "8", "--out", str(tmp_path / "agent"), "--max-new-tokens", "4",
          "--tensorboard", str(tmp_path / "tb")])
    assert (tmp_path / "agent" / "matching_network.safetensors").is_file()
    assert list((tmp_path / "tb").glob("**/events.out.tfevents.*"))


def test_example_quickstart(tiny_model_dir, tmp_path):
    results = example("quickstart").main(model=str(tiny_model_dir), episodes=16, out=str(tmp_path / "q"),
                                         test_limit=4)
    assert list(results["agents"]) == ["zero_shot", "random", "knn", "listwise"]


def test_example_swap_algorithms(tiny_model_dir):
    scores = example("swap_algorithms").main(model=str(tiny_model_dir), episodes=16, test_limit=4)
    assert set(scores) == {"ppo", "a2c", "maskable_ppo", "reinforce"}


def test_example_custom_dataset(tiny_model_dir, capsys):
    scores = example("custom_dataset").main(model=str(tiny_model_dir))
    assert set(scores) == {"random", "knn"} and "kNN picked:" in capsys.readouterr().out


def test_example_plw_backbone(tiny_model_dir, tmp_path):
    scores = example("plw_backbone").main(model=str(tiny_model_dir), max_steps=2, out=str(tmp_path / "a"),
                                          test_limit=4)
    assert set(scores) == {"base", "plw=0.1 adapter"}


def test_train_backbone_cli(tiny_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Reverse the word.", "input": w, "output": w[::-1]}) + "\n"
                            for w in ["apple", "river", "fig", "pear"]))
    main(["train-backbone", "--model", str(tiny_model_dir), "--data", str(data), "--plw", "0.05", "--max-steps", "2",
          "--batch-size", "2", "--out", str(tmp_path / "adapter")])
    record = json.loads((tmp_path / "adapter" / "pillow_training.json").read_text())
    assert record["plw"] == 0.05 and record["steps"] == 2 and record["examples"] == 4
    with pytest.raises(SystemExit):
        main(["train-backbone", "--model", str(tiny_model_dir), "--plw", "2", "--out", str(tmp_path / "x")])


def test_demo_compares_three_settings(tiny_model_dir, tmp_path, capsys):
    main(["demo", "--model", str(tiny_model_dir), "--queries", "6", "--max-new-tokens", "3",
          "--out", str(tmp_path / "demo.json")])
    results = json.loads((tmp_path / "demo.json").read_text())["results"]
    assert list(results) == ["zero-shot", "random 2-shot", "same-task 2-shot"]
    assert all({"reward", "rouge_l", "semantic", "exact_match", "seconds"} <= set(r) for r in results.values())
    assert "| same-task 2-shot |" in capsys.readouterr().out


def test_example_deploy_selector_reloads_in_a_fresh_process(tiny_model_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "examples" / "deploy_selector.py"
    run = subprocess.run([sys.executable, str(script), "--model", str(tiny_model_dir), "--episodes", "16",
                          "--folder", str(tmp_path / "agent")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("=== ") == 3 and run.stdout.count("<|im_start|>assistant") >= 3
    assert (tmp_path / "agent" / "agent.json").is_file()
