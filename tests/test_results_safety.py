"""Issue 30, results and files: one writer per results folder, resumes keyed by the weights, a failed or
interrupted command keeps what it did and says so, strict JSON, long queries cut before tokenising,
and ``bench_pillow.py`` checks everything before it writes. Each test is one numbered case."""

import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agents import make_agent
from pillow_env import builtin_suite
from pillow_env.bench import BenchConfig, run_bench
from pillow_env.cli import main
from pillow_env.data import MAX_QUERY_CHARS, Example, cut_queries, split_examples

from .conftest import make_model

ROOT = Path(__file__).resolve().parents[1]
SUITE = builtin_suite(0)


def _cli(argv, capsys):
    """Run the CLI: (exit code, stderr)."""
    try:
        main(argv)
    except SystemExit as exit_info:
        return exit_info.code, capsys.readouterr().err
    except KeyboardInterrupt:  # uncaught, it would end the whole pytest session
        pytest.fail("Ctrl-C escaped the CLI as a KeyboardInterrupt traceback")
    pytest.fail(f"{argv[0]} exited normally")


def _one_line(err: str) -> str:
    """The command's own message, which must be a single line (progress bars aside) and no traceback."""
    lines = re.findall(r"pillow-env [a-z-]+: .*", err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the refusals below must come before it."""
    import pillow_env.resources as resources

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(resources, "shared_backend", refuse)


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder`` the way a running bench does (it prints 'held' once it has it)."""
    code = ("import sys, time\nfrom pillow_env.outputs import claim_folder\n"
            "with claim_folder(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_case1_a_second_run_into_one_out_is_refused_naming_the_pid(tmp_path, capsys, no_model):
    out = tmp_path / "bench"
    holder = _hold_lock(out)
    try:
        code, err = _cli(["bench", "--agents", "random,knn", "--out", str(out)], capsys)
        assert code == 2 and f"in use by another run (pid {holder.pid})" in _one_line(err)
        assert not (out / "results.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops a killed holder's lock
        holder.wait()
    with pytest.raises(AssertionError, match="a model was loaded"):  # now free: it gets as far as the model
        main(["bench", "--agents", "random,knn", "--out", str(out)])


def test_case2_a_failed_select_stream_leaves_out_as_it_was(tmp_path, monkeypatch, capsys):
    folder = make_agent("knn").save(tmp_path / "knn")
    keep = tmp_path / "keep.jsonl"
    keep.write_text('{"kept": true}\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("not json\n"))
    code, err = _cli(["select", "--agent-dir", str(folder), "--queries", "-", "--out", str(keep)], capsys)
    assert code == 2 and "<stdin>:1: invalid JSON" in err
    assert keep.read_text() == '{"kept": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["keep.jsonl", "knn"]


def test_case3_and_25_resume_is_keyed_by_the_weights_and_results_md_records_every_option(tiny_model_dir, tmp_path,
                                                                                          capsys):
    from pillow_env.resources import shared_backend

    out = tmp_path / "bench"
    argv = ["bench", "--agents", "zero_shot,random", "--model", str(tiny_model_dir), "--suite", "builtin",
            "--test-limit", "3", "--train-limit", "5", "--max-new-tokens", "2", "--out", str(out)]
    main(argv)
    table = (out / "results.md").read_text()
    assert "train `builtin` (first 5): 5" in table and "test `builtin` (first 3): 3" in table
    assert "weights fingerprint" in table and "agent kwargs `{}`" in table
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    # The same folder name, other weights: a rerun must not serve the old agents as if they were these.
    make_model(vocab_size=json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"],
               seed=1).save_pretrained(tiny_model_dir)
    shared_backend.cache_clear()  # a new process would load the folder afresh
    code, err = _cli(argv, capsys)
    assert code == 2 and "was computed with other weights" in err and "nothing was overwritten" in err
    assert (out / "results.json").read_bytes() == before


def _interrupt_evaluation_of(monkeypatch, name):
    import agents

    real = agents.evaluate

    def evaluate(agent, *args, **kwargs):
        if agent.name == name:
            raise KeyboardInterrupt
        return real(agent, *args, **kwargs)

    monkeypatch.setattr(agents, "evaluate", evaluate)
    return real


def test_case25_a_rerun_after_a_kill_logs_no_episode_twice(tiny_model_dir, tmp_path, monkeypatch):
    config = dict(agents=["knn", "reinforce"], model=str(tiny_model_dir), episodes=8, num_envs=4, test_limit=2,
                  train_limit=4, max_new_tokens=2)
    clean = tmp_path / "clean"
    run_bench(BenchConfig(**config, out=str(clean)), progress=False)
    killed = tmp_path / "killed"
    real = _interrupt_evaluation_of(monkeypatch, "reinforce")  # killed after reinforce trained and logged
    with pytest.raises(KeyboardInterrupt, match="1 finished agent"):
        run_bench(BenchConfig(**config, out=str(killed)), progress=False)
    import agents

    monkeypatch.setattr(agents, "evaluate", real)
    run_bench(BenchConfig(**config, out=str(killed)), progress=False)

    def episodes(folder):
        return [json.loads(line) for line in (folder / "trajectories.jsonl").read_text().splitlines()]

    assert len(episodes(killed)) == len(episodes(clean)) > 0


def test_case11_ctrl_c_in_bench_is_one_line_and_keeps_the_finished_agents(tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys):
    out = tmp_path / "bench"
    _interrupt_evaluation_of(monkeypatch, "knn")
    code, err = _cli(["bench", "--agents", "zero_shot,knn", "--model", str(tiny_model_dir), "--test-limit", "2",
                      "--max-new-tokens", "2", "--out", str(out)], capsys)
    assert code == 130 and "interrupted: kept 1 finished agent(s) (zero_shot)" in _one_line(err)
    assert list(json.loads((out / "results.json").read_text())["agents"]) == ["zero_shot"]


class _InterruptedStdin(io.StringIO):
    """Stdin whose user presses Ctrl-C after the first line."""

    def __iter__(self):
        yield '{"instruction": "Reverse the letters of this word.", "input": "garden"}\n'
        raise KeyboardInterrupt


def test_case11_ctrl_c_in_a_select_stream_keeps_out_as_it_was(tmp_path, monkeypatch, capsys, hash_encoder,
                                                             tiny_backbone):
    import agents.selector as selector_module

    monkeypatch.setattr(selector_module, "load_encoder", lambda *a, **k: hash_encoder)
    monkeypatch.setattr(selector_module, "load_renderer", lambda model: tiny_backbone.renderer)
    folder = make_agent("knn").save(tmp_path / "knn")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in SUITE.pool[:6]))
    keep = tmp_path / "keep.jsonl"
    keep.write_text("old\n")
    monkeypatch.setattr(sys, "stdin", _InterruptedStdin())
    code, err = _cli(["select", "--agent-dir", str(folder), "--pool", str(pool), "--queries", "-", "--out",
                      str(keep)], capsys)
    assert code == 130 and "interrupted: kept nothing" in err and "1 selection(s) made were not written" in err
    assert keep.read_text() == "old\n" and not list(tmp_path.glob(".keep.jsonl.*"))


def test_case17_shots_and_candidates_are_checked_against_the_pool_before_any_load(tmp_path, capsys, no_model):
    out = tmp_path / "o"
    code, err = _cli(["bench", "--agents", "knn", "--shots", "1000", "--out", str(out)], capsys)
    assert code == 2 and f"--shots 1000: the pool holds only {len(SUITE.pool)} exemplars" in err
    code, err = _cli(["bench", "--agents", "knn", "--candidates", "1", "--out", str(out)], capsys)
    assert code == 2 and "--candidates 1 must be at least --shots 2" in err
    code, err = _cli(["train-agent", "--agent", "knn", "--shots", "1000", "--out", str(out)], capsys)
    assert code == 2 and "--shots 1000" in err
    assert not out.exists()  # no folder, so no cache.sqlite


def test_case20_a_full_disk_names_the_file(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "trajectories.jsonl").symlink_to("/dev/full")  # every write to it: [Errno 28] No space left
    code, err = _cli(["bench", "--agents", "zero_shot", "--model", str(tiny_model_dir), "--test-limit", "2",
                      "--max-new-tokens", "2", "--out", str(out)], capsys)
    assert code == 2 and "No space left on device" in err and str(out / "trajectories.jsonl") in err


def test_case23_a_huge_query_is_cut_by_characters_and_stored_cut(tiny_model_dir, tmp_path):
    long = Example("Summarise this. " + "word " * 40_000, "more " * 40_000, "a summary")
    assert [len(q.instruction) for q in cut_queries([long], "q")] == [MAX_QUERY_CHARS]  # with a warning
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(long.to_dict()) + "\n" + json.dumps(SUITE.test[0].to_dict()) + "\n")
    out = tmp_path / "bench"
    with pytest.warns(UserWarning, match="1 query longer than 16,384 characters cut"):
        run_bench(BenchConfig(agents=["zero_shot"], model=str(tiny_model_dir), test=str(test), max_new_tokens=2,
                              out=str(out)), progress=False)
    (first, second) = json.loads((out / "results.json").read_text())["agents"]["zero_shot"]["per_query"]
    assert len(first["query"]) == len(first["input"]) == MAX_QUERY_CHARS
    assert (second["query"], second["input"]) == (SUITE.test[0].instruction, SUITE.test[0].input)  # untouched


def _bench_pillow():
    spec = importlib.util.spec_from_file_location("bench_pillow", ROOT / "benchmarks" / "bench_pillow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    module.train_backbone = no_training
    return module


def test_case5_bench_pillow_into_a_folder_of_other_data_writes_nothing(tmp_path):
    out = tmp_path / "pillow"
    (out / "data").mkdir(parents=True)
    earlier = out / "data" / "test.jsonl"
    earlier.write_text(json.dumps(SUITE.test[0].to_dict()) + "\n")  # an earlier run's (other --test-size)
    with pytest.raises(SystemExit, match="test.jsonl holds other data"):
        _bench_pillow().main(["--data", "builtin", "--test-size", "3", "--out", str(out)])
    assert earlier.read_text() == json.dumps(SUITE.test[0].to_dict()) + "\n"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["test.jsonl"]


def test_case6_split_examples_stratifies_by_category():
    examples = [Example(f"{task} {i}", "", "answer", {"category": task})
                for task, n in (("open_qa", 80), ("summarization", 8), ("classification", 8)) for i in range(n)]
    parts = split_examples(examples, [24, 24, 24], seed=0)
    for part in parts:
        counts = {task: sum(e.task == task for e in part) for task in ("open_qa", "summarization", "classification")}
        assert counts == {"open_qa": 20, "summarization": 2, "classification": 2}
    assert len({e.instruction for part in parts for e in part}) == 72


@pytest.mark.parametrize("argv, message", [
    (["--test-size", "-117"], "argument --test-size: must be >= 1, got -117"),
    (["--pool-size", "100000"], "--pool-size 100000: the builtin suite's pool part holds only"),
])
def test_case7_bench_pillow_sizes_must_be_positive_and_available(tmp_path, capsys, argv, message):
    out = tmp_path / "pillow"
    with pytest.raises(SystemExit) as exit_info:
        _bench_pillow().main(["--data", "builtin", *argv, "--out", str(out)])
    assert message in f"{exit_info.value.code} {capsys.readouterr().err}" and not out.exists()
