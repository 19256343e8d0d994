"""Bad input for the reward cache and the trajectory log: read-only visitors, foreign or empty files,
torn or non-UTF-8 log lines, non-finite rewards. Each test failed before its fix."""

import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

import pillow_env.cache as cache_module
from pillow_env.cache import CacheError, DiskCache
from pillow_env.data import Example
from pillow_env.trajectories import ReadReport, TrajectoryLog, example_key, read_trajectories

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"k1": {"reward": 0.5}, "k2": {"reward": -0.5}}


def side_files(path: Path) -> list[Path]:
    return [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def make_cache(path: Path) -> None:
    writer = DiskCache(path)
    writer.put_many(KEYS)
    writer.close()


# -- cache: read-only use ------------------------------------------------------------------------

VISIT_THEN_OWN = textwrap.dedent("""
    import importlib.util, json, os, sqlite3, sys, warnings
    spec = importlib.util.spec_from_file_location("cache", sys.argv[1])
    cache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cache)
    folder, leftovers = sys.argv[2], sys.argv[3] == "leftovers"
    path = os.path.join(folder, "cache.sqlite")
    writer = cache.DiskCache(path)
    writer.put_many({"k1": 1, "k2": 2})
    writer.close()
    os.chmod(path, 0o444)
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        visitor = cache.DiskCache(path)
        out["visitor"] = [visitor.readonly, len(visitor.get_many(["k1", "k2"]))]
        visitor.close()
        out["after_visit"] = sorted(os.listdir(folder))
        if leftovers:  # what a plain mode=ro open (the old read-only open) leaves: -wal/-shm, mode 444
            sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT * FROM results").fetchall()
        os.chmod(path, 0o644)
        owner = cache.DiskCache(path)
        out["owner"] = [owner.readonly, len(owner.get_many(["k1", "k2"]))]
    out["files"] = sorted(os.listdir(folder))
    out["warnings"] = [str(w.message) for w in caught]
    print(json.dumps(out))
""")


def _run_as_nobody(code: str, argv: list[str]) -> tuple[int, str, str]:
    """Run ``code`` (with ``sys.argv[1:] = argv``) in a forked child that has dropped to user and group
    65534: exit status, stdout, and the traceback if it raised."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(out_read)
            os.close(err_read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.chdir("/tmp")
            sys.stdout = os.fdopen(out_write, "w")
            sys.argv = ["-c", *argv]
            exec(compile(code, "<visitor>", "exec"), {"__name__": "__main__"})
            sys.stdout.flush()
            status = 0
        except BaseException:
            import traceback

            os.write(err_write, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(out_write)
    os.close(err_write)
    with os.fdopen(out_read) as out, os.fdopen(err_read) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stdout, stderr


@pytest.mark.parametrize("case", ["clean", "leftovers"])
def test_read_only_visitor_leaves_nothing_that_breaks_the_owner(case):
    """Real permissions: as user 65534 when run as root (root ignores file modes: a forked child drops
    to that user, so no second interpreter is needed), with the cache module copied where that user
    can read it. A run on the cache while it is
    mode 444 must leave no -wal/-shm; and where an older version left such files (mode 444), the
    owner's next run serves the hits read-only instead of moving the healthy cache aside."""
    top = Path(tempfile.mkdtemp(prefix="pillow-env-visit-", dir="/tmp"))  # pytest's tmp is private to root
    try:
        folder = top / "shared"
        folder.mkdir()
        module = top / "cache.py"
        module.write_bytes((ROOT / "pillow_env" / "cache.py").read_bytes())
        module.chmod(0o644)
        top.chmod(0o755)
        argv = [str(module), str(folder), case]
        if os.geteuid() == 0:
            os.chown(folder, 65534, -1)
            returncode, stdout, stderr = _run_as_nobody(VISIT_THEN_OWN, argv)
        else:
            run = subprocess.run([sys.executable, "-c", VISIT_THEN_OWN, *argv], capture_output=True, text=True,
                                 env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}, cwd="/tmp", timeout=60)
            returncode, stdout, stderr = run.returncode, run.stdout, run.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert returncode == 0, stderr
    out = json.loads(stdout)
    assert out["visitor"] == [True, 2] and out["after_visit"] == ["cache.sqlite"]
    assert out["owner"] == [case == "leftovers", 2]
    assert not [f for f in out["files"] if ".bad-" in f]
    if case == "leftovers":
        assert any("read-only" in w and "cache.sqlite-shm" in w for w in out["warnings"])


def test_read_only_open_creates_no_side_files(tmp_path, monkeypatch):
    """Simulates a cache we may not write (root ignores modes): ``os.access`` reports it unwritable.
    The read-only open must create no -wal/-shm (a plain ``mode=ro`` open of a WAL file does)."""
    path = tmp_path / "cache.sqlite"
    make_cache(path)
    real_access = os.access
    monkeypatch.setattr(cache_module.os, "access",
                        lambda p, mode: not (Path(p) == path and mode & os.W_OK) and real_access(p, mode))
    with pytest.warns(UserWarning, match=f"reward cache {re.escape(str(path))} is read-only.*nothing is stored"):
        shared = DiskCache(path)
    assert shared.readonly and shared.get_many(["k1", "k2", "k3"]) == KEYS
    shared.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.sqlite"]


@pytest.mark.parametrize("message", ["attempt to write a readonly database", "unable to open database file"])
def test_a_permission_error_is_never_taken_for_damage(tmp_path, monkeypatch, message):
    """Simulates the errors SQLite gives when the file or its -wal/-shm cannot be written (root cannot
    provoke them): the read-write open raises them. The cache is then used read-only, never set aside."""
    path = tmp_path / "cache.sqlite"
    make_cache(path)

    def refuse(self: DiskCache) -> sqlite3.Connection:
        raise sqlite3.OperationalError(message)

    monkeypatch.setattr(DiskCache, "_open", refuse)
    with pytest.warns(UserWarning, match=f"read-only \\({message}; check the owner and mode"):
        shared = DiskCache(path)
    assert shared.readonly and shared.get_many(["k1", "k2"]) == KEYS
    shared.close()
    assert not list(tmp_path.glob("*.bad-*"))


def test_a_cache_that_cannot_be_opened_at_all_is_a_clear_error_not_set_aside(tmp_path, monkeypatch):
    """Simulates a file SQLite cannot open read-only (permissions): every URI open fails. One clear
    error naming the file; nothing is moved."""
    path = tmp_path / "cache.sqlite"
    make_cache(path)
    before = path.read_bytes()
    real_connect = sqlite3.connect

    def connect(database, *args, **kwargs):
        if kwargs.get("uri"):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(cache_module.sqlite3, "connect", connect)
    expected = f"reward cache {re.escape(str(path))} cannot be opened \\(unable to open"
    with pytest.raises(CacheError, match=expected) as err:
        DiskCache(path)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.sqlite"] and path.read_bytes() == before


# -- cache: only files of ours ---------------------------------------------------------------------

def _zero_bytes(path: Path) -> None:
    path.touch()


def _only_a_view(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE VIEW answers AS SELECT 42 AS answer")


def _no_schema(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 7")  # a valid SQLite file with no tables at all


def _foreign_wal(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    with conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.close()


def _foreign_damaged(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.executemany("INSERT INTO notes VALUES (?)", [("x" * 500,)] * 40)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("make, message", [
    (_zero_bytes, "is an empty file, not a pillow-env cache"),
    (_only_a_view, "another program's SQLite database"),
    (_no_schema, "another program's SQLite database"),
    (_foreign_wal, "another program's SQLite database"),
    (_foreign_damaged, "is a damaged SQLite database .* not recognisably a pillow-env cache"),
], ids=["zero-bytes", "only-a-view", "no-schema", "foreign-wal", "foreign-damaged"])
def test_a_file_that_is_not_ours_is_refused_and_left_exactly_as_it_was(tmp_path, make, message):
    path = tmp_path / "theirs.db"
    make(path)
    assert not side_files(path) and (path.stat().st_size > 0) == (make is not _zero_bytes)
    before = path.read_bytes()
    with pytest.raises(CacheError, match=message) as err:
        DiskCache(path)
    assert str(path) in str(err.value) and "nothing was changed" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.db"] and path.read_bytes() == before


def test_a_cache_made_by_earlier_versions_is_still_ours(tmp_path):
    """The layout the previous code created in place (tables made with IF NOT EXISTS, WAL mode)."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    with conn:
        conn.execute("INSERT INTO meta VALUES ('schema', ?)", (cache_module.SCHEMA_VERSION,))
        conn.execute("INSERT INTO results VALUES ('k1', ?)", (json.dumps(KEYS["k1"]),))
    conn.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = DiskCache(path)
    assert not reopened.readonly and reopened.get_many(["k1"]) == {"k1": KEYS["k1"]}
    reopened.close()


def test_a_new_cache_appears_whole_even_when_another_run_creates_it_first(tmp_path, monkeypatch):
    """A new cache is linked into place complete; the run that loses the race uses the winner's file."""
    path = tmp_path / "new" / "cache.sqlite"
    real_link = os.link
    raced = []

    def link(src, dst):
        if not raced:
            raced.append(True)
            make_cache(path)  # the other run gets there first
        return real_link(src, dst)

    monkeypatch.setattr(cache_module.os, "link", link)
    mine = DiskCache(path)
    assert mine.get_many(["k1", "k2"]) == KEYS
    mine.close()
    assert raced and sorted(p.name for p in path.parent.iterdir()) == ["cache.sqlite"]


def test_a_new_cache_is_made_where_hard_links_are_not_supported(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cache_module.os, "link", no_links)
    path = tmp_path / "cache.sqlite"
    make_cache(path)
    reopened = DiskCache(path)
    assert reopened.get_many(["k1"]) == {"k1": KEYS["k1"]}
    reopened.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.sqlite"]


# -- trajectory log --------------------------------------------------------------------------------

POOL = [Example(f"Instruction {i}.", f"in {i}", f"out {i}") for i in range(6)]
QUERIES = [Example(f"Query {i}.", f"q {i}", f"a {i}") for i in range(3)]


def record(n: int, reward: float = 0.5, **components: float) -> dict:
    exemplars = [example_key(POOL[n % 6]), example_key(POOL[(n + 1) % 6])]
    return {"query": example_key(QUERIES[n % 3]), "exemplars": exemplars,
            "reward": reward, "components": components or {"text": reward}, "fingerprint": "fp", "n": n}


def read(path: Path) -> tuple[list, ReadReport]:
    report = ReadReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_trajectories(path, POOL, QUERIES, fingerprint="fp", report=report), report


def test_a_torn_last_record_is_skipped_and_the_next_one_starts_on_its_own_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = TrajectoryLog(path)
    log.append(record(n) for n in range(18))
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b'"reward"')])  # killed mid-way through the 18th line
    log.append([record(18, reward=0.25)])
    assert path.read_bytes().endswith(b"\n") and len(path.read_bytes().splitlines()) == 19
    with pytest.warns(UserWarning, match=f"trajectory log {re.escape(str(path))}: skipped 1 damaged line.*line 18"):
        episodes = read_trajectories(path, POOL, QUERIES, fingerprint="fp")
    assert len(episodes) == 18 and episodes[-1].reward == 0.25
    assert [t.reward for t in episodes[:17]] == [0.5] * 17
    report = read(path)[1]
    assert (report.read, report.skipped) == (18, 1) and report.errors[0].startswith("line 18: JSONDecodeError")


def test_each_batch_is_one_write_of_whole_lines(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    writes: list[bytes] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    TrajectoryLog(path).append(record(n) for n in range(3))
    assert len(writes) == 1 and writes[0] == path.read_bytes() and writes[0].count(b"\n") == 3
    assert writes[0].endswith(b"\n")


def test_a_line_that_is_not_utf8_is_skipped_and_counted(tmp_path):
    path = tmp_path / "log.jsonl"
    TrajectoryLog(path).append([record(0)])
    with open(path, "ab") as f:
        f.write(json.dumps(record(1)).encode()[:-1] + b'\xff"}\n')
    TrajectoryLog(path).append([record(2)])
    episodes, report = read(path)
    assert len(episodes) == 2 and (report.read, report.skipped) == (2, 1)
    assert len(report.errors) == 1 and report.errors[0].startswith("line 2: UnicodeDecodeError")


@pytest.mark.parametrize("reward, components", [
    (math.nan, {}), (math.inf, {}), (1e308 * 10, {}), (0.5, {"text": math.nan}), (0.5, {"semantic": -math.inf}),
    ("0.5", {}), (True, {}),
])
def test_non_finite_rewards_are_refused_on_write(tmp_path, reward, components):
    path = tmp_path / "log.jsonl"
    log = TrajectoryLog(path)
    log.append([record(0)])
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"trajectory log {re.escape(str(path))}: refusing a record"):
        log.append([record(1), record(2, reward, **components)])
    assert path.read_bytes() == before


@pytest.mark.parametrize("bad", ['"reward": NaN', '"reward": Infinity', '"reward": -1e309', '"reward": 1' + "0" * 400,
                                 '"reward": 0.5, "components": {"text": NaN}', '"reward": null'])
def test_non_finite_rewards_in_a_log_are_skipped_and_counted(tmp_path, bad):
    path = tmp_path / "log.jsonl"
    good = json.dumps(record(0))
    line = good.replace('"reward": 0.5, "components": {"text": 0.5}', bad)
    assert line != good
    path.write_text(f"{good}\n{line}\n{good}\n")
    episodes, report = read(path)
    assert [t.reward for t in episodes] == [0.5, 0.5] and all(math.isfinite(v) for t in episodes
                                                              for v in t.components.values())
    assert (report.read, report.skipped) == (2, 1) and report.errors[0].startswith("line 2:")
