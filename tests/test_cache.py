import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pillow_env import builtin_suite
from pillow_env.cache import CacheError, DiskCache, LRUCache
from pillow_env.env import PillowMatchEnv
from pillow_env.engine import RewardEngine
from pillow_env.rewards import PillowReward, exact_match

from .conftest import HashEncoder, make_backbone

ROOT = Path(__file__).resolve().parents[1]
SUITE = builtin_suite(0)
REQUESTS = [([SUITE.pool[i], SUITE.pool[i + 1]], SUITE.train[i]) for i in range(6)]

SCORE_SCRIPT = textwrap.dedent("""
    import json, sys
    from pillow_env import builtin_suite
    from pillow_env.engine import RewardEngine
    from pillow_env.rewards import PillowReward
    from tests.conftest import HashEncoder, make_backbone
    suite = builtin_suite(0)
    requests = [([suite.pool[i], suite.pool[i + 1]], suite.train[i]) for i in range(6)]
    engine = RewardEngine(make_backbone(), PillowReward(encoder=HashEncoder()), max_new_tokens=4,
                          cache_path=sys.argv[1])
    results = engine.score(requests)
    print(json.dumps({"rewards": [r.reward for r in results], "generations": engine.stats.generations,
                      "disk_hits": engine.stats.disk_hits}))
""")


def run_scorer(cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", SCORE_SCRIPT, str(cache)], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "random"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lru_evicts_least_recently_used():
    lru = LRUCache(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.get("a")
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3 and len(lru) == 2


def test_engine_dedupes_and_caches_in_memory(tiny_backbone, hash_encoder):
    engine = RewardEngine(tiny_backbone, PillowReward(encoder=hash_encoder), max_new_tokens=4)
    first = engine.score(REQUESTS + REQUESTS[:2])
    assert engine.stats.generations == 6 and engine.stats.duplicates == 2 and engine.stats.backend_calls == 1
    again = engine.score(REQUESTS)
    assert engine.stats.generations == 6 and engine.stats.memory_hits == 6
    assert [r.reward for r in again] == [r.reward for r in first[:6]] and all(r.cached for r in again)
    assert engine.stats.prompt_tokens > 0 and engine.stats.generation_seconds > 0


def test_plain_reward_function_is_accepted(tiny_backbone):
    engine = RewardEngine(tiny_backbone, exact_match, max_new_tokens=4)
    results = engine.score(REQUESTS[:2])
    assert all(r.reward in (0.0, 1.0) and dict(r.components) == {} for r in results)


def test_key_depends_on_settings(tiny_backbone, hash_encoder):
    reward = PillowReward(encoder=hash_encoder)
    a = RewardEngine(tiny_backbone, reward, max_new_tokens=4)
    b = RewardEngine(tiny_backbone, reward, max_new_tokens=5)
    c = RewardEngine(make_backbone(seed=1), reward, max_new_tokens=4)
    d = RewardEngine(tiny_backbone, PillowReward(text_weight=1.0, semantic_weight=0.0, encoder=hash_encoder),
                     max_new_tokens=4)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint, d.fingerprint}) == 4


def test_disk_cache_is_shared_across_processes(tmp_path):
    cache = tmp_path / "rewards.sqlite"
    first = run_scorer(cache)
    second = run_scorer(cache)
    assert first["generations"] == 6 and first["disk_hits"] == 0
    assert second["generations"] == 0 and second["disk_hits"] == 6
    assert second["rewards"] == first["rewards"]
    in_process = RewardEngine(make_backbone(), PillowReward(encoder=HashEncoder()), max_new_tokens=4,
                              cache_path=cache)
    assert [r.reward for r in in_process.score(REQUESTS)] == first["rewards"]
    assert in_process.stats.generations == 0


@pytest.mark.parametrize("damage", ["truncated", "older_schema"])
def test_damaged_or_older_cache_of_ours_is_set_aside_not_crashed_on(tmp_path, damage):
    cache = tmp_path / "rewards.sqlite"
    writer = RewardEngine(make_backbone(), PillowReward(encoder=HashEncoder()), max_new_tokens=4, cache_path=cache)
    first = [r.reward for r in writer.score(REQUESTS)]
    writer.close()
    if damage == "truncated":
        DiskCache(cache).close()  # checkpoint the WAL into the main file first
        data = cache.read_bytes()
        cache.write_bytes(data[: len(data) // 3])
        for suffix in ("-wal", "-shm"):
            Path(str(cache) + suffix).unlink(missing_ok=True)
    else:
        with sqlite3.connect(cache) as conn:
            conn.execute("UPDATE meta SET value = 'pillow-env-cache-0' WHERE key = 'schema'")
    with pytest.warns(UserWarning, match="reward cache"):
        engine = RewardEngine(make_backbone(), PillowReward(encoder=HashEncoder()), max_new_tokens=4,
                              cache_path=cache)
        results = engine.score(REQUESTS)
    assert [r.reward for r in results] == pytest.approx(first)
    if damage != "truncated":  # a truncated file may still open; then it is a miss, not an error
        assert list(tmp_path.glob("rewards.sqlite.bad-*"))


def test_the_cache_never_touches_a_file_it_did_not_create(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"instruction": "Reverse the word.", "input": "fig", "output": "gif"}\n')
    other = tmp_path / "other-app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    theirs = tmp_path / "theirs.db"
    with sqlite3.connect(theirs) as conn:  # has a 'meta' table, but not our marker
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema', 'someone-else-9')")
    before = {p: p.read_bytes() for p in (pool, other, theirs)}
    for path, message in [(tmp_path, "is a directory"), (pool, "not an SQLite file"),
                          (other, "another program's SQLite database"), (theirs, "another program's SQLite database")]:
        with pytest.raises(CacheError, match=message):
            DiskCache(path)
        with pytest.raises(CacheError, match=message):  # refused before any model load
            PillowMatchEnv(SUITE.pool, SUITE.train, model="never/loaded", encoder=HashEncoder(), cache_path=path)
    assert {p: p.read_bytes() for p in before} == before and tmp_path.is_dir()
    with sqlite3.connect(other) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-app.db", "pool.jsonl", "theirs.db"]


AS_OTHER_USER = textwrap.dedent("""
    import importlib.util, json, sys, warnings
    spec = importlib.util.spec_from_file_location("cache", sys.argv[1])
    cache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cache)
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shared = cache.DiskCache(sys.argv[2])
        out["readonly"] = shared.readonly
        out["hits"] = shared.get_many(["k1", "k2", "missing"])
        shared.put_many({"k3": {"reward": 0.1}})
        out["after_put"] = len(shared)
    out["warnings"] = [str(w.message) for w in caught]
    try:
        cache.DiskCache(sys.argv[3])
    except cache.CacheError as err:
        out["unwritable"] = str(err)
    print(json.dumps(out))
""")


def test_read_only_cache_is_used_read_only_and_unwritable_location_is_refused():
    """Run as another user (root bypasses permissions): the system Python, the cache module by path."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="pillow-env-shared-", dir="/tmp"))  # pytest's tmp is private to root
    try:
        _read_only_case(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _read_only_case(top: Path) -> None:
    shared_dir = top / "shared"
    shared_dir.mkdir()
    path = shared_dir / "cache.sqlite"
    writer = DiskCache(path)
    writer.put_many({"k1": {"reward": 0.5}, "k2": {"reward": -0.5}})
    writer.close()
    if os.geteuid() == 0:
        python, user = "/usr/bin/python3", 65534
        assert Path(python).exists(), "root runs this case as user 65534 with the system python3"
        for p in (top, shared_dir):
            p.chmod(0o755)
        path.chmod(0o644)
    else:
        python, user = sys.executable, None
        path.chmod(0o444)
        shared_dir.chmod(0o555)
    try:
        module = top / "cache.py"  # a copy the other user can read wherever the checkout lives
        module.write_bytes((ROOT / "pillow_env" / "cache.py").read_bytes())
        module.chmod(0o644)
        run = subprocess.run([python, "-c", AS_OTHER_USER, str(module), str(path),
                              str(shared_dir / "new" / "cache.sqlite")], capture_output=True, text=True, user=user,
                             env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}, cwd="/tmp", timeout=60)
    finally:
        shared_dir.chmod(0o755)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["readonly"] and out["hits"] == {"k1": {"reward": 0.5}, "k2": {"reward": -0.5}}
    assert out["after_put"] == 2 and any("read-only" in w and "nothing is stored" in w for w in out["warnings"])
    assert "cannot create reward cache" in out["unwritable"] and "not a writable directory" in out["unwritable"]
    assert DiskCache(path).get_many(["k1"]) == {"k1": {"reward": 0.5}} and not list(shared_dir.glob("*.bad-*"))


def test_cache_survives_kill_9_mid_write(tmp_path):
    cache = tmp_path / "hammer.sqlite"
    writer = textwrap.dedent(f"""
        from pillow_env.cache import DiskCache
        cache = DiskCache({str(cache)!r})
        n = 0
        while True:
            cache.put_many({{f"k{{n}}-{{j}}": {{"generation": "x" * 200, "reward": 0.5}} for j in range(200)}})
            n += 1
            if n == 3:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reopened = DiskCache(cache)
    n = len(reopened)
    assert n >= 600 and n % 200 == 0  # whole batches only: each put_many is one transaction
    rows = reopened.get_many([f"k0-{j}" for j in range(200)])
    assert len(rows) == 200 and all(v["reward"] == 0.5 for v in rows.values())
    assert not list(tmp_path.glob("*.bad-*"))
