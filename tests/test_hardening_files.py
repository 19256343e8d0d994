"""Second hardening pass, files and pools: a repeated pool record never shifts exemplars, a failed
or self-overwriting ``select`` never loses a file, a refused cache leaves no ``--out`` behind."""

import json

import pytest

from agents import Budget, make_agent
from agents.selector import Selector
from pillow_env import builtin_suite
from pillow_env.cli import main
from pillow_env.engine import RewardEngine
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

from .test_selector import _cli

SUITE = builtin_suite(0)
POOL, TRAIN = SUITE.pool[:8], SUITE.train[:12]


@pytest.fixture
def hashed(monkeypatch, hash_encoder):
    import agents.selector as selector_module
    import pillow_env.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "load_encoder", lambda *a, **k: hash_encoder)
    monkeypatch.setattr(selector_module, "load_encoder", lambda *a, **k: hash_encoder)
    return hash_encoder


def _write(path, examples):
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in examples))
    return path


def test_repeated_pool_record_gives_the_right_exemplars(tiny_backbone, hashed, tmp_path, monkeypatch):
    raw = [*POOL[:3], POOL[1], *POOL[3:]]  # record 3 repeats record 1
    pool_file = _write(tmp_path / "pool.jsonl", raw)
    queries = _write(tmp_path / "q.jsonl", TRAIN[:4])
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hashed), max_new_tokens=2)
    learned = make_agent("reinforce")
    learned.fit(PillowMatchVectorEnv(4, pool=POOL, queries=TRAIN, engine=engine, encoder=hashed),
                Budget(episodes=4), progress=False)
    for name, agent in [("knn", make_agent("knn")), ("reinforce", learned)]:
        folder = agent.save(tmp_path / name)
        with pytest.warns(UserWarning, match="dropped 1 repeated record"):
            selector = Selector.load(folder, pool_file, encoder=hashed, renderer=tiny_backbone.renderer)
        assert selector.pool == POOL  # the same de-duplicated list the env and the fingerprint use
        for sel in selector.select(TRAIN[:4]):
            assert sel.exemplars == [POOL[i] for i in sel.indices]
        out = tmp_path / f"{name}.jsonl"
        with pytest.warns(UserWarning, match="repeated record"):
            _cli(monkeypatch, tiny_backbone, ["select", "--agent-dir", str(folder), "--pool", str(pool_file),
                                              "--queries", str(queries), "--out", str(out)])
        for line in out.read_text().splitlines():
            record = json.loads(line)
            assert record["exemplars"] == [POOL[i].to_dict() for i in record["indices"]]


def test_select_never_loses_a_file(tiny_backbone, hashed, tmp_path, monkeypatch, capsys):
    folder = make_agent("knn").save(tmp_path / "knn")
    pool = _write(tmp_path / "pool.jsonl", POOL)
    queries = _write(tmp_path / "q.jsonl", TRAIN[:3])
    before = queries.read_text()
    with pytest.raises(SystemExit) as exit_info:  # --out is the queries file
        _cli(monkeypatch, tiny_backbone, ["select", "--agent-dir", str(folder), "--pool", str(pool),
                                          "--queries", str(queries), "--out", str(queries)])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err and queries.read_text() == before
    out = tmp_path / "kept.jsonl"
    out.write_text("earlier results\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"nope": 1}\n')
    with pytest.raises(SystemExit):  # a failed select leaves an existing --out as it was, and no temp file
        _cli(monkeypatch, tiny_backbone, ["select", "--agent-dir", str(folder), "--pool", str(pool),
                                          "--queries", str(bad), "--out", str(out)])
    assert out.read_text() == "earlier results\n" and sorted(p.name for p in tmp_path.glob(".*")) == []
    _cli(monkeypatch, tiny_backbone, ["select", "--agent-dir", str(folder), "--pool", str(pool),
                                      "--queries", str(queries), "--out", str(out)])
    assert len(out.read_text().splitlines()) == 3


def test_select_names_a_missing_model_folder(tmp_path, hashed, capsys):
    folder = make_agent("knn").save(tmp_path / "knn")
    with pytest.raises(SystemExit):
        main(["select", "--agent-dir", str(folder), "--queries", "-", "--model", str(tmp_path / "missing-dir")])
    assert "no such folder" in capsys.readouterr().err


def test_bench_refusing_the_cache_creates_no_out_folder(tmp_path, capsys):
    cache = tmp_path / "not-a-cache.sqlite"
    cache.write_text("hello")
    with pytest.raises(SystemExit):
        main(["bench", "--agents", "knn", "--out", str(tmp_path / "o"), "--cache", str(cache)])
    assert "not a pillow-env cache" in capsys.readouterr().err and not (tmp_path / "o").exists()
