"""Caches of scored generations: a bounded in-memory LRU and an SQLite file shared across runs.

The disk cache uses WAL journaling, so readers never block the writer and a ``kill -9`` mid-write
loses at most the uncommitted batch. A file that is not a readable cache of this version (corrupt,
truncated, another program's database, an older schema) is reported with a warning and renamed
aside, and a fresh cache starts in its place: a cache is never a reason to crash a training run.
"""

from __future__ import annotations

import json
import sqlite3
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["LRUCache", "DiskCache", "SCHEMA_VERSION"]

SCHEMA_VERSION = "pillow-env-cache-1"


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

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)


class DiskCache:
    """Key -> JSON value store in one SQLite file (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as err:
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
        if not items:
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
