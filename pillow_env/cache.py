"""Caches of scored generations: a bounded in-memory LRU and an SQLite file shared across runs.

The disk cache uses WAL journaling, so readers never block the writer and a ``kill -9`` mid-write
loses at most the uncommitted batch. It only ever touches a file it created:

- a directory, a file that is not SQLite (a dataset given by mistake) or another program's SQLite
  database (no pillow-env schema marker) is refused with :class:`CacheError`; nothing is moved;
- a damaged or older-version cache of ours is set aside (renamed, with a warning) and a new one
  starts in its place;
- a cache we may read but not write (a shared, read-only file) is used read-only: hits are served,
  misses computed and kept in memory, with a warning that nothing is stored;
- a new cache in a location we cannot write is a :class:`CacheError` at once.

:func:`check_cache_path` runs the same checks without opening anything, so callers can fail before
loading a model.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["LRUCache", "DiskCache", "CacheError", "SCHEMA_VERSION", "check_cache_path"]

SCHEMA_VERSION = "pillow-env-cache-1"
SCHEMA_FAMILY = "pillow-env-cache-"
SQLITE_HEADER = b"SQLite format 3\x00"


class CacheError(ValueError):
    """The cache path cannot be used (and nothing was changed); the message names the path."""


def _probe(path: Path) -> str:
    """What an existing SQLite file is: ``"ours"``, ``"ours-old"``, ``"empty"``, ``"foreign"`` or ``"damaged"``."""
    for mode in ("mode=ro", "immutable=1"):  # a WAL file in a directory we cannot write opens only as immutable
        try:
            conn = sqlite3.connect(f"file:{path}?{mode}", uri=True, timeout=30.0)
            try:
                return _classify(conn)
            finally:
                conn.close()
        except sqlite3.OperationalError:
            continue
        except sqlite3.DatabaseError:
            return "damaged"
    return "damaged"


def _classify(conn: sqlite3.Connection) -> str:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return "empty"
    if "meta" not in tables:
        return "foreign"
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or not str(row[0]).startswith(SCHEMA_FAMILY):
        return "foreign"
    if row[0] != SCHEMA_VERSION:
        return "ours-old"
    conn.execute("SELECT count(*) FROM results WHERE rowid = 1").fetchone()
    return "ours"


def check_cache_path(path: str | Path) -> str:
    """Raise :class:`CacheError` unless ``path`` can be our cache; returns ``"new"``, ``"ours"``,
    ``"read-only"`` or ``"set-aside"`` (damaged or older cache of ours, to be renamed)."""
    path = Path(path)
    if path.is_dir():
        raise CacheError(f"reward cache {path} is a directory; give a file path, e.g. {path / 'cache.sqlite'}")
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise CacheError(f"cannot create reward cache {path}: {parent} is not a writable directory")
        return "new"
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as err:
        raise CacheError(f"reward cache {path} cannot be read: {err.strerror}") from None
    if head and head != SQLITE_HEADER:
        raise CacheError(f"{path} is not a pillow-env cache (not an SQLite file; a dataset or another file given "
                         "as --cache?); nothing was changed. Give another path")
    state = _probe(path) if head else "empty"
    if state == "foreign":
        raise CacheError(f"{path} is another program's SQLite database (no pillow-env schema marker); "
                         "nothing was changed. Give another path")
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)
    if state in ("damaged", "ours-old"):
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise CacheError(f"reward cache {path} is damaged or of an older version and {path.parent} is not "
                             "writable, so it cannot be set aside; give another path")
        return "set-aside"
    return "ours" if writable or state == "empty" else "read-only"


class LRUCache:
    """A dict bounded to ``maxsize`` entries, evicting the least recently used."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Any | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def clear(self) -> None:
        self._data.clear()

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)


class DiskCache:
    """Key -> JSON value store in one SQLite file (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        state = check_cache_path(self.path)
        self.readonly = state == "read-only"
        if state == "set-aside":
            self._set_aside("damaged or of an older version")
        if self.readonly:
            warnings.warn(f"reward cache {self.path} is read-only: cached results are served, new ones are kept "
                          "in memory only (nothing is stored)", stacklevel=3)
            self._conn = self._open_readonly()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as err:  # damaged in a way the probe did not see
            self._set_aside(f"unreadable ({err})")
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema {version!r}, expected {SCHEMA_VERSION!r}")
            conn.execute("SELECT count(*) FROM results WHERE rowid = 1").fetchone()
            return conn
        except sqlite3.DatabaseError:
            conn.close()
            raise

    def _open_readonly(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=30.0)
            conn.execute("SELECT count(*) FROM results WHERE rowid = 1").fetchone()
            return conn
        except sqlite3.OperationalError:  # WAL needs a writable -shm; a file nobody writes can be read as immutable
            return sqlite3.connect(f"file:{self.path}?immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)

    def _set_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        warnings.warn(f"reward cache {self.path} is {why}; moved it to {aside} and started a new one",
                      stacklevel=3)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(keys)
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            try:
                rows = self._conn.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", chunk).fetchall()
            except sqlite3.DatabaseError as err:
                warnings.warn(f"reward cache {self.path}: read failed ({err}); treating as a miss", stacklevel=2)
                return found
            for key, value in rows:
                try:
                    found[key] = json.loads(value)
                except json.JSONDecodeError:
                    continue  # a damaged row is a miss; it will be recomputed and overwritten
        return found

    def put_many(self, items: Mapping[str, Any]) -> None:
        if not items or self.readonly:
            return
        rows = [(k, json.dumps(v)) for k, v in items.items()]
        try:
            with self._conn:  # one transaction: all rows or none
                self._conn.execute("BEGIN")
                self._conn.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)", rows)
        except sqlite3.DatabaseError as err:
            warnings.warn(f"reward cache {self.path}: write failed ({err}); results kept in memory only",
                          stacklevel=2)

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM results").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
