"""Every code block of the README runs: Python blocks on the tiny model (budgets cut to a few calls),
the RLlib block against a real local server where Ray is installed; every ``pillow-env`` command
line in a bash block parses, and every ``make`` target named exists."""

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
CHAT = 'spec = "openai-chat:'  # the chat-backend block, run against a real server
BASH = [code for lang, code in BLOCKS if lang == "bash"]


@pytest.fixture
def tiny_defaults(monkeypatch, tiny_backbone, hash_encoder, tmp_path):
    """The real defaults replaced by the tiny model and the hash encoder, in a scratch folder."""
    import agents.selector as selector_module
    import pillow_env.env as env_module
    import pillow_env.resources as resources

    resources.shared_engine.cache_clear()
    monkeypatch.setattr(resources, "shared_backend", lambda *a, **k: tiny_backbone)
    for module in (env_module, resources, selector_module):
        monkeypatch.setattr(module, "load_encoder", lambda *a, **k: hash_encoder)
    monkeypatch.setattr(selector_module, "load_renderer", lambda *a, **k: tiny_backbone.renderer)
    monkeypatch.chdir(tmp_path)
    yield
    resources.shared_engine.cache_clear()


def test_the_readme_has_its_blocks():
    assert len(PYTHON) >= 3 and len(BASH) >= 3
    sections = re.findall(r"^## (.+)$", README, flags=re.M)
    order = ["Install", "Quickstart in Python", "The environment", "Agents", "Command line", "Generation backends",
             "Using a trained selector", "Distributed rollouts on Ray RLlib", "Your own model, adapter and data",
             "Built-in suites", "Models and caches", "Bad input: what happens", "Known limits", "Results"]
    assert sections == order


@pytest.mark.parametrize("index", [i for i, code in enumerate(PYTHON) if "ray" not in code and CHAT not in code])
def test_python_block_runs_on_the_tiny_model(index, tiny_defaults, capsys):
    code = PYTHON[index].replace("2000", "16").replace("2,000", "16")
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out  # every block prints what it shows


@pytest.mark.parametrize("index", [i for i, code in enumerate(PYTHON) if "ray" in code])
def test_rllib_block_runs_against_a_real_server(index, tiny_model_dir, tmp_path):
    pytest.importorskip("ray")
    from pillow_env.backends.local_server import LocalServer

    with LocalServer(str(tiny_model_dir), log=tmp_path / "server.log", threads=1) as server:
        code = PYTHON[index]
        code = re.sub(r'spec = "[^"]+"', f'spec = "openai:{server.url}#{tiny_model_dir}"', code)
        code = code.replace('"/shared/cache.sqlite"', repr(str(tmp_path / "cache.sqlite")))
        code = code.replace("ray.init()", "ray.init(num_cpus=2, include_dashboard=False)")
        code = code.replace("range(10)", "range(1)") + "\nalgo.stop()\nray.shutdown()\n"
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("index", [i for i, code in enumerate(PYTHON) if CHAT in code])
def test_chat_block_runs_against_a_real_servers_chat_endpoint(index, tiny_model_dir, hash_encoder, monkeypatch,
                                                              tmp_path, capsys):
    import pillow_env.env as env_module
    import pillow_env.resources as resources
    from pillow_env.backends.local_server import LocalServer

    for module in (env_module, resources):
        monkeypatch.setattr(module, "load_encoder", lambda *a, **k: hash_encoder)
    monkeypatch.chdir(tmp_path)
    resources.shared_engine.cache_clear()
    with LocalServer(str(tiny_model_dir), log=tmp_path / "server.log", threads=1, startup_timeout=600) as server:
        code = re.sub(r'spec = "[^"]+"', f'spec = "{server.chat_spec}"', PYTHON[index]).replace("2000", "8")
        code = code.replace('split="test")', 'split="test", queries=pillow_env.builtin_suite(0).test[:4])')
        exec(compile("import pillow_env\n" + code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    resources.shared_engine.cache_clear()
    assert capsys.readouterr().out


def test_every_command_line_parses():
    from pillow_env.cli import build_parser

    makefile = (ROOT / "Makefile").read_text()
    commands = 0
    for block in BASH:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["pillow-env"]:
                build_parser().parse_args([w for w in words[1:] if w != "&"])
                commands += 1
            elif words[:1] == ["make"]:
                assert re.search(rf"^{words[1]}:", makefile, flags=re.M), line
    assert commands >= 8


def test_no_readme_import_fails():
    for code in PYTHON:
        for line in code.splitlines():
            if line.startswith(("import ", "from ")) and "ray" not in line:
                exec(line, {})
    assert "PillowMatchEnv" in sys.modules["pillow_env"].__all__
