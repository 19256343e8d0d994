"""Every scored episode, appended to a JSONL file, so learners can train off-policy from all of them.

A record names the query and the exemplars by content keys (not indices), so a log stays valid when
a pool is reordered or extended, and is matched back to a pool by :func:`read_trajectories`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import Example
from .outputs import naming

__all__ = ["TrajectoryLog", "Trajectory", "ReadReport", "example_key", "read_trajectories"]


def example_key(example: Example) -> str:
    """A short content hash of one example (instruction, input, output)."""
    text = "\0".join((example.instruction, example.input, example.output))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TrajectoryLog:
    """Appends one JSON line per scored request.

    Each batch goes out in one ``write`` call on a file opened for appending, so a kill leaves whole
    records only; if an earlier run was killed mid-line anyway (the file ends without a newline), the
    batch starts with a newline so its first record is not glued onto the torn one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write ``records``; raises ``ValueError`` (nothing written) if any has a non-finite reward."""
        lines = []
        for record in records:
            if not _finite_rewards(record):
                raise ValueError(f"trajectory log {self.path}: refusing a record with a non-finite or non-numeric "
                                 f"reward or component ({record.get('reward')!r}, {record.get('components')!r}); "
                                 "nothing was written")
            lines.append(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        if not lines:
            return
        data = "".join(lines).encode()
        with naming(self.path):  # a full disk's [Errno 28] names no file of its own
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                end = os.fstat(fd).st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    data = b"\n" + data
                while data:  # one call; more only if the disk is full mid-write
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)


def _finite_rewards(record: Mapping[str, Any]) -> bool:
    """The reward and every component are finite real numbers (NaN or inf would poison a learner)."""
    components = record.get("components", {})
    if not isinstance(components, Mapping):
        return False
    return all(_finite(x) for x in (record.get("reward"), *components.values()))


def _finite(x: Any) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


@dataclass
class ReadReport:
    """What :func:`read_trajectories` skipped as damaged, so no record is dropped unseen."""

    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Trajectory:
    """One logged episode matched to a pool and a query list: who, which exemplars (in prompt order), reward."""

    query_index: int
    exemplars: tuple[int, ...]
    reward: float
    components: Mapping[str, float]


def read_trajectories(path: str | Path, pool: Sequence[Example], queries: Sequence[Example], *,
                      fingerprint: str | None = None, report: ReadReport | None = None) -> list[Trajectory]:
    """Records of ``path`` whose query and exemplars are all in ``queries`` / ``pool``.

    ``fingerprint`` keeps only episodes scored by that engine (same model, reward and settings).
    A damaged line (torn by a kill, not UTF-8, not a JSON record, or with a NaN/inf reward or
    component) is skipped, not fatal, and counted: in ``report`` (read / skipped counts and one message
    per skipped line) when given, and in a ``UserWarning`` naming the file whenever any was skipped.
    """
    report = report if report is not None else ReadReport()
    pool_index = {example_key(e): i for i, e in enumerate(pool)}
    query_index = {example_key(q): i for i, q in enumerate(queries)}
    out: list[Trajectory] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                q = query_index.get(record["query"])
                ids = [pool_index.get(k) for k in record["exemplars"]]
                if not _finite_rewards(record):
                    raise ValueError("reward or a component is not a finite number")
                reward = float(record["reward"])
            except (KeyError, TypeError, ValueError) as err:  # ValueError covers bad UTF-8 and bad JSON
                report.skipped += 1
                report.errors.append(f"line {number}: {type(err).__name__}: {err}")
                continue
            if fingerprint is not None and record.get("fingerprint") != fingerprint:
                continue
            if q is None or any(i is None for i in ids):
                continue
            out.append(Trajectory(q, tuple(ids), reward, dict(record.get("components", {}))))
    report.read = len(out)
    if report.skipped:
        warnings.warn(f"trajectory log {path}: skipped {report.skipped} damaged line(s); first: {report.errors[0]}",
                      stacklevel=2)
    return out
