"""Every scored episode, appended to a JSONL file, so learners can train off-policy from all of them.

A record names the query and the exemplars by content keys (not indices), so a log stays valid when
a pool is reordered or extended, and is matched back to a pool by :func:`read_trajectories`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import Example

__all__ = ["TrajectoryLog", "Trajectory", "example_key", "read_trajectories"]


def example_key(example: Example) -> str:
    """A short content hash of one example (instruction, input, output)."""
    text = "\0".join((example.instruction, example.input, example.output))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TrajectoryLog:
    """Appends one JSON line per scored request; each batch is written with one ``write`` call."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        if text:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())


@dataclass(frozen=True)
class Trajectory:
    """One logged episode matched to a pool and a query list: who, which exemplars (in prompt order), reward."""

    query_index: int
    exemplars: tuple[int, ...]
    reward: float
    components: Mapping[str, float]


def read_trajectories(path: str | Path, pool: Sequence[Example], queries: Sequence[Example], *,
                      fingerprint: str | None = None) -> list[Trajectory]:
    """Records of ``path`` whose query and exemplars are all in ``queries`` / ``pool``.

    ``fingerprint`` keeps only episodes scored by that engine (same model, reward and settings);
    a damaged line (e.g. the last one after a kill) is skipped.
    """
    pool_index = {example_key(e): i for i, e in enumerate(pool)}
    query_index = {example_key(q): i for i, q in enumerate(queries)}
    out: list[Trajectory] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                if fingerprint is not None and record.get("fingerprint") != fingerprint:
                    continue
                q = query_index.get(record["query"])
                ids = [pool_index.get(k) for k in record["exemplars"]]
                reward = float(record["reward"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if q is None or any(i is None for i in ids):
                continue
            out.append(Trajectory(q, tuple(ids), reward, dict(record.get("components", {}))))
    return out
