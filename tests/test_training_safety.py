"""Issue 30, training outputs: ``train-agent`` / ``train-backbone`` check ``--out`` before any model
loads, keep a checkpoint at Ctrl-C (named in one line; LoRA resumes from it), never write
``Infinity`` into their records, and never train one agent over another's folder."""

import json
import os
import re
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from agents import make_agent
from pillow_env.cli import main
from pillow_env.data import Example
from pillow_env.training import TRAINING_RECORD, TrainConfig, train_lora


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
    import pillow_env.training as training

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(resources, "shared_backend", refuse)
    monkeypatch.setattr(training.Backbone, "from_pretrained", refuse)


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` in a forked child that, under root (which ignores file modes), drops to user 65534:
    its exit code and stderr."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 99
        try:
            os.close(read)
            sys.stderr = os.fdopen(write, "w")
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                main(argv)
                status = 0
            except SystemExit as err:
                status = err.code if isinstance(err.code, int) else 1
        except BaseException:
            sys.stderr.write(traceback.format_exc())
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.fixture
def read_only():
    """A folder nobody but root may write in, yet everyone may enter (pytest's tmp is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="pillow-env-ro-", dir="/tmp"))
    top.chmod(0o555)
    yield top
    top.chmod(0o755)
    shutil.rmtree(top)


@pytest.mark.parametrize("command", [["train-agent", "--agent", "reinforce"], ["train-backbone"]])
def test_case4_a_read_only_out_is_refused_before_training(read_only, no_model, command):
    out = read_only / "trained"
    code, err = _as_nobody([*command, "--out", str(out)])
    assert code == 2 and f"--out {out} is not writable" in _one_line(err)


def test_case22_train_agent_over_another_agent_is_refused(tmp_path, capsys, no_model):
    out = make_agent("knn").save(tmp_path / "agent")
    before = sorted(p.name for p in out.iterdir())
    code, err = _cli(["train-agent", "--agent", "reinforce", "--out", str(out)], capsys)
    assert code == 2 and "holds a saved knn agent" in err and "would mix their files" in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_case11_ctrl_c_in_train_agent_keeps_the_agent_so_far(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from pillow_env.vector import PillowMatchVectorEnv

    real_step, calls = PillowMatchVectorEnv.step, []

    def step(self, actions):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(self, actions)

    monkeypatch.setattr(PillowMatchVectorEnv, "step", step)
    out = tmp_path / "agent"
    code, err = _cli(["train-agent", "--agent", "reinforce", "--model", str(tiny_model_dir), "--episodes", "64",
                      "--num-envs", "4", "--max-new-tokens", "2", "--out", str(out)], capsys)
    assert code == 130 and f"interrupted: kept the agent as trained so far, in {out / 'interrupted'}" in _one_line(err)
    assert json.loads((out / "interrupted" / "agent.json").read_text())["agent"] == "reinforce"
    assert not (out / "agent.json").exists()  # --out itself holds no half-trained agent


def test_case11_ctrl_c_in_train_backbone_keeps_a_checkpoint_a_rerun_resumes(tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys):
    import pillow_env.training as training

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Write {w} in capital letters.", "output": w.upper()}) + "\n"
                            for w in ("apple", "river", "candle", "garden", "planet", "silver")))
    argv = ["train-backbone", "--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "4",
            "--epochs", "2", "--batch-size", "2", "--out", str(tmp_path / "lora")]
    real_loss, calls = training.weighted_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # during the third optimizer step
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "weighted_loss", loss)
    code, err = _cli(argv, capsys)
    checkpoint = tmp_path / "lora" / "checkpoint"
    assert code == 130 and f"interrupted: kept a checkpoint after step 2 of 4 in {checkpoint}" in err
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == 2
    monkeypatch.setattr(training, "weighted_loss", real_loss)
    main(argv)
    record = json.loads((tmp_path / "lora" / TRAINING_RECORD).read_text())
    assert record["steps"] == 4 and record["loss_curve"][:2] == state["curve"]  # resumed, not restarted
    assert len(calls) == 3 and not checkpoint.exists()


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_case21_records_are_strict_json(tiny_backbone, tiny_model_dir, tmp_path, capsys):
    code, err = _cli(["train-backbone", "--model", str(tiny_model_dir), "--max-length", "1", "--max-steps", "1",
                      "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "max_length must be >= 2" in err
    # Two tokens, both of the answer: no prompt token is left, so there is no generation ratio (not Infinity).
    examples = [Example("Say it.", "", "apple river candle garden planet")] * 2
    out = train_lora(tiny_backbone, examples, TrainConfig(max_length=2, max_steps=1, batch_size=2),
                     output_dir=tmp_path / "lora", progress=False)
    record = _strict((out / TRAINING_RECORD).read_text())
    assert record["mean_prompt_tokens"] == 0 and record["generation_ratio"] is None
