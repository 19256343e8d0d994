"""Caches of scored generations: a bounded in-memory LRU and an SQLite file shared across runs.

The disk cache uses WAL journaling, so readers never block the writer and a ``kill -9`` mid-write
loses at most the uncommitted batch. It only ever touches a file it created:

- a directory, a file that is not SQLite (a dataset given by mistake), an empty (0-byte) file or an
  SQLite database without our schema marker (another program's, even one holding only a view) is
  refused with :class:`CacheError`; nothing is moved and no ``-wal``/``-shm`` file is left beside it;
- a new cache is built under a temporary name and linked into place, so no run ever sees a half-made
  one (which the rule above would refuse);
- a damaged or older-version cache of ours is set aside (renamed, with a warning) and a new one
  starts in its place; a permission or lock error is never taken for damage;
- a cache we may read but not write (a shared, read-only file, or one whose ``-wal``/``-shm`` we
  cannot write) is used read-only: hits are served, misses computed and kept in memory, with a
  warning that nothing is stored. A read-only open never creates ``-wal``/``-shm`` files;
- a new cache in a location we cannot write is a :class:`CacheError` at once.

:func:`check_cache_path` runs the same checks without changing anything, so callers can fail before
loading a model.
"""

from __future__ import annotations

import json
import os
import secrets
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
SIDE_SUFFIXES = ("-wal", "-shm")
TABLES = {name: f"CREATE TABLE {name} (key TEXT PRIMARY KEY, value TEXT NOT NULL)" for name in ("meta", "results")}


class CacheError(ValueError):
    """The cache path cannot be used (and nothing was changed); the message names the path."""


def _side_files(path: Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in SIDE_SUFFIXES]


def _read_only_uris(path: Path) -> list[str]:
    """URIs that read ``path`` without creating anything beside it.

    ``mode=ro`` on a WAL database creates ``-wal`` and ``-shm`` when they are missing (left behind,
    with the file's mode, for the owner to trip on), so it is used only when both exist: then it also
    sees what only the WAL holds. Without them everything is in the main file and ``immutable=1``
    reads it with no side files and no locks; it is also the fallback when the ``-shm`` is unusable.
    """
    base = path.absolute().as_uri()
    if all(p.exists() for p in _side_files(path)):
        return [f"{base}?mode=ro", f"{base}?immutable=1"]
    return [f"{base}?immutable=1"]


def _is_damage(err: sqlite3.DatabaseError) -> bool:
    """Corrupt bytes (``DatabaseError`` proper), as opposed to an ``OperationalError``: permissions,
    locks, a missing file. Only damage may get a file of ours set aside."""
    return not isinstance(err, sqlite3.OperationalError)


def _probe(path: Path) -> str:
    """What an existing SQLite file is: ``"ours"``, ``"ours-old"``, ``"ours-damaged"`` or ``"foreign"``.

    Read-only, creating nothing; raises :class:`CacheError` when it cannot be read at all, or is
    damaged and not recognisably ours."""
    err: sqlite3.DatabaseError | None = None
    for uri in _read_only_uris(path):
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30.0)
            try:
                return _classify(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            if _is_damage(e):
                if _our_tables_on_first_page(path):
                    return "ours-damaged"
                raise CacheError(f"{path} is a damaged SQLite database ({e}) not recognisably a pillow-env cache; "
                                 "nothing was changed. Delete it or give another path") from None
            err = e
    raise CacheError(f"reward cache {path} cannot be opened ({err}; check the permissions of it and of any "
                     "-wal/-shm beside it); nothing was changed")


def _classify(conn: sqlite3.Connection) -> str:
    """Ours only by the marker row in our ``meta`` table; anything else (no tables, only a view, other
    tables) is another program's."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        return "foreign"
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or not str(row[0]).startswith(SCHEMA_FAMILY):
        return "foreign"
    if row[0] != SCHEMA_VERSION:
        return "ours-old"
    if "results" not in tables:
        return "ours-damaged"
    conn.execute("SELECT count(*) FROM results WHERE rowid = 1").fetchone()
    return "ours"


def _our_tables_on_first_page(path: Path) -> bool:
    """Damage can hide the marker row; our table definitions, kept as text on the first page (at most
    64 KiB), still tell a cache of ours from another program's file."""
    with open(path, "rb") as f:
        first = f.read(65536)
    return all(sql.encode() in first for sql in TABLES.values())


def _unwritable(path: Path) -> list[Path]:
    """What stops a read-write WAL open of ``path``: the file, an existing ``-wal``/``-shm``, the directory."""
    blockers = [p for p in (path, *_side_files(path)) if p.exists() and not os.access(p, os.W_OK)]
    if not os.access(path.parent, os.W_OK | os.X_OK):
        blockers.append(path.parent)
    return blockers


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
    if not head:
        raise CacheError(f"{path} is an empty file, not a pillow-env cache (a new cache is never left empty); "
                         "nothing was changed. Delete it or give another path")
    if head != SQLITE_HEADER:
        raise CacheError(f"{path} is not a pillow-env cache (not an SQLite file; a dataset or another file given "
                         "as --cache?); nothing was changed. Give another path")
    state = _probe(path)
    if state == "foreign":
        raise CacheError(f"{path} is another program's SQLite database (no pillow-env schema marker); "
                         "nothing was changed. Give another path")
    if state in ("ours-damaged", "ours-old"):
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise CacheError(f"reward cache {path} is damaged or of an older version and {path.parent} is not "
                             "writable, so it cannot be set aside; give another path")
        return "set-aside"
    return "read-only" if _unwritable(path) else "ours"


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
        if state == "set-aside":
            self._set_aside("damaged or of an older version")
            state = "new"
        if state == "new":
            self._create()
            state = check_cache_path(self.path)  # ours, or whatever a run racing us put there first
        why = ", ".join(f"cannot write {p}" for p in _unwritable(self.path)) if state == "read-only" else ""
        if not why:
            try:
                self._conn = self._open()
            except sqlite3.DatabaseError as err:
                if not _is_damage(err):  # a permission or lock error says nothing about the file
                    why = f"{err}; check the owner and mode of it and of its -wal/-shm"
                else:
                    self._set_aside(f"unreadable ({err})")
                    self._create()
                    self._conn = self._open()
        self.readonly = bool(why)
        if self.readonly:
            warnings.warn(f"reward cache {self.path} is read-only ({why}): cached results are served, new ones "
                          "are kept in memory only (nothing is stored)", stacklevel=3)
            self._conn = self._open_readonly()

    def _create(self) -> None:
        """Build a new cache under a temporary name, then link it into place: no run ever sees it empty or
        half-made, and of two runs creating it at once the second simply uses the first one's."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            conn = sqlite3.connect(tmp)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                with conn:
                    for sql in TABLES.values():
                        conn.execute(sql)
                    conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            finally:
                conn.close()  # checkpoints: the file alone holds the schema, with no -wal/-shm beside it
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another run created it first
            except OSError:  # no hard links on this file system: a rename, which could replace a racing run's
                if not self.path.exists():
                    os.replace(tmp, self.path)
        finally:
            for p in (tmp, *_side_files(tmp)):
                p.unlink(missing_ok=True)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema {row and row[0]!r}, expected {SCHEMA_VERSION!r}")
            conn.execute("SELECT count(*) FROM results WHERE rowid = 1").fetchone()
            return conn
        except sqlite3.DatabaseError:
            conn.close()
            raise

    def _open_readonly(self) -> sqlite3.Connection:
        err: sqlite3.DatabaseError | None = None
        for uri in _read_only_uris(self.path):
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
                conn.execute("SELECT count(*) FROM results WHERE rowid = 1").fetchone()
                return conn
            except sqlite3.DatabaseError as e:
                if conn is not None:
                    conn.close()
                err = e
        raise CacheError(f"reward cache {self.path} cannot be opened, even read-only ({err}); nothing was changed")

    def _set_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        for suffix in ("", *SIDE_SUFFIXES):
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
