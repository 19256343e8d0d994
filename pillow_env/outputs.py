"""How commands write their outputs: one writer per folder, checked before the work, strict JSON,
whole files, errors that name the path, and Ctrl-C that says what it kept.

- :func:`claim_folder` creates an output folder, proves it writable and holds an ``fcntl`` lock on
  ``FOLDER/.lock`` for the run: a second run into the same folder is refused in one line naming the
  running pid. The kernel drops the lock when the holder dies, however it dies (SIGKILL included).
- :func:`write_json` / :func:`write_text` write a temporary file and rename it into place, so a
  kill never leaves half a file; JSON is strict (``allow_nan=False``): no ``NaN`` or ``Infinity``.
- :class:`Interrupted` is a ``KeyboardInterrupt`` that carries what was kept; the CLI prints it as
  ``interrupted: kept ...`` and exits 130.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "Interrupted", "claim_folder", "prepare_folder", "naming", "write_json", "write_text"]

LOCK_NAME = ".lock"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command, with a sentence saying what it kept (``kept``)."""

    def __init__(self, kept: str) -> None:
        super().__init__(kept)
        self.kept = kept


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (a full disk: ``[Errno 28]``) naming ``path``."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise


def prepare_folder(folder: str | Path, flag: str = "--out") -> Path:
    """Create ``folder`` (and its parents) and prove it writable by writing a file in it: a read-only
    location fails here, in one line naming ``flag``, not after hours of training."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {folder} is not writable ({err.strerror or err})") from None
    return folder


@contextlib.contextmanager
def claim_folder(folder: str | Path, flag: str = "--out") -> Iterator[Path]:
    """:func:`prepare_folder`, then hold ``FOLDER/.lock`` until the block ends (or the process dies)."""
    folder = prepare_folder(folder, flag)
    lock = folder / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise ValueError(f"{flag} {folder}: cannot open {lock} ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise ValueError(f"{flag} {folder} is in use by another run (pid {holder}); wait for it to end or "
                             f"give another {flag}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` whole or not at all (a temporary file renamed into place), naming ``path`` on error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming(path):
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> None:
    """Strict JSON (no ``NaN``/``Infinity``, which other readers reject), written as :func:`write_text`."""
    try:
        text = json.dumps(data, indent=indent, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"{path}: {err}; nothing written") from None
    write_text(path, text)
