"""Instruction examples: one record type, loaders for Alpaca / Dolly / mapped JSON(L), and seeded splits.

A record that cannot be read fails loudly with the file, the line (JSONL) or index (JSON) and the
field, so a typo in a 10k-line file costs seconds, not a silent accuracy drop.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DataError",
    "Example",
    "ExampleSource",
    "FORMATS",
    "LoadReport",
    "load_examples",
    "parse_json_line",
    "parse_record",
    "split_examples",
    "cut_queries",
    "MAX_QUERY_CHARS",
    "examples_fingerprint",
    "require_answers",
    "resolve_examples",
    "unique_pool",
]


MAX_QUERY_CHARS = 16_384  # see cut_queries


class DataError(ValueError):
    """A dataset file or record is malformed; the message names the file, line/index and field."""


@dataclass(frozen=True)
class Example:
    """One solved instruction: the unit of both the exemplar pool and the query sets."""

    instruction: str
    input: str = ""
    output: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def task(self) -> str | None:
        """The task family (`category` in Dolly, `task` in the built-in suite), if known."""
        value = self.metadata.get("task", self.metadata.get("category"))
        return None if value is None else str(value)

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output, **self.metadata}


# Our field -> the file's field. `None` means the format has no such field (it defaults to "").
FORMATS: dict[str, dict[str, str | None]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
}
_REQUIRED = ("instruction", "output")


@dataclass
class LoadReport:
    """What `load_examples(..., on_error="skip")` left out, so nothing is dropped unseen."""

    loaded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def _detect(record: Mapping[str, Any]) -> str:
    if "response" in record or "context" in record:
        return "dolly"
    return "alpaca"


def _to_example(record: Any, mapping: Mapping[str, str | None], where: str, require_output: bool = True) -> Example:
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    values: dict[str, str] = {}
    for ours, theirs in mapping.items():
        if theirs is None or theirs not in record or record[theirs] is None:
            if ours == "instruction" or (ours == "output" and require_output):
                raise DataError(f"{where}: missing field {theirs or ours!r} (needed for {ours!r})")
            values[ours] = ""
            continue
        value = record[theirs]
        if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN / Infinity are no answer
            raise DataError(f"{where}: field {theirs!r} is {value} (not a finite number); give the text")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise DataError(f"{where}: field {theirs!r} must be a string, got {type(value).__name__}")
        _check_encodable(value, where, theirs)
        values[ours] = value
    if not values["instruction"].strip():
        raise DataError(f"{where}: field {mapping['instruction']!r} is empty")
    used = {v for v in mapping.values() if v is not None}
    metadata = {k: v for k, v in record.items() if k not in used}
    for key, value in metadata.items():  # written back with the record (select's output, results)
        if isinstance(value, str):
            _check_encodable(value, where, key)
    return Example(values["instruction"], values.get("input", ""), values["output"], metadata)


def _check_encodable(value: str, where: str, name: str) -> None:
    """Refuse a lone surrogate (JSON's ``"\\ud800"``): valid JSON, but no text; it would fail later,
    in the tokenizer or on writing results, naming no file."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"{where}: field {name!r} holds a lone surrogate {value[err.start]!r} at character "
                        f"{err.start} (an unpaired \\ud800-\\udfff escape); fix the text") from None


def parse_json_line(line: str | bytes, where: str) -> Any:
    """One JSONL line (text or UTF-8 bytes, a leading byte-order mark dropped, as in files), parsed;
    a ``DataError`` naming ``where`` (file or stream, and line) if it is not UTF-8 or not JSON."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = line[err.start:err.start + 1]
            raise DataError(f"{where}: not UTF-8 text (byte {err.start}: {bad!r}); re-save the file as UTF-8") from None
    try:
        return json.loads(line.removeprefix("\ufeff"))
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON ({err.msg}, column {err.colno})") from None


def _records(path: Path) -> Iterable[tuple[str, Any]]:
    """Yield (location, parsed record); JSON arrays are located by index, JSONL by line.

    UTF-8 with or without a byte-order mark; a line that is not UTF-8 is a bad record (skippable).
    A ``.jsonl`` file that holds one pretty-printed JSON array is read as the array it is, and a
    ``.json`` file that holds one object per line (JSONL) as the lines they are.
    """
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    stripped = raw.lstrip()
    if path.suffix == ".jsonl" and stripped[:1] == b"[":
        yield from _array(path, raw)
        return
    if path.suffix == ".jsonl" or (stripped[:1] == b"{" and (path.suffix != ".json" or _is_jsonl(raw))):
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, parse_json_line(line, where)
            except DataError as err:
                yield where, err
        return
    yield from _array(path, raw)


def _is_jsonl(raw: bytes) -> bool:
    """Whether a ``.json`` file starting with ``{`` is JSONL: its first line is a whole JSON object and
    more JSON follows (one JSON document would be "Extra data" after that object)."""
    first, _, rest = raw.partition(b"\n")
    try:
        return isinstance(json.loads(first.decode("utf-8")), dict) and bool(rest.strip())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _array(path: Path, raw: bytes) -> Iterable[tuple[str, Any]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text; re-save the file as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})") from None
    if isinstance(data, Mapping):
        for key in ("data", "examples", "train"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records (or JSONL), got {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"{path}[{index}]", record


def parse_record(record: Any, where: str, *, format: str = "auto", fields: Mapping[str, str | None] | None = None,
                 require_output: bool = True) -> Example:
    """One parsed JSON record -> :class:`Example`; ``where`` (file and line) prefixes any error."""
    if fields is not None:
        mapping: Mapping[str, str | None] = {"input": None, "output": None, **fields}
    else:
        mapping = FORMATS[_detect(record) if format == "auto" and isinstance(record, Mapping)
                          else ("alpaca" if format == "auto" else format)]
    return _to_example(record, mapping, where, require_output)


def load_examples(
    path: str | Path,
    format: Literal["auto", "alpaca", "dolly"] = "auto",
    *,
    fields: Mapping[str, str | None] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    report: LoadReport | None = None,
    require_output: bool = True,
) -> list[Example]:
    """Read a JSON array or JSONL file of instruction records.

    Args:
        path: the file (``.json`` array, or ``.jsonl`` / one object per line).
        format: ``"alpaca"`` (instruction/input/output), ``"dolly"`` (instruction/context/response,
            ``category`` kept as metadata) or ``"auto"`` (decided per record).
        fields: any other shape, as ``{"instruction": "question", "input": None, "output": "answer"}``;
            overrides ``format``.
        on_error: ``"raise"`` (default) stops at the first bad record; ``"skip"`` leaves bad records
            out and counts them in ``report`` (and warns with the count).
        report: filled with loaded / skipped counts and the error messages.
        require_output: ``False`` accepts records without an answer (new queries to select for).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    if format not in ("auto", *FORMATS):
        raise DataError(f"unknown format {format!r}; expected 'auto', 'alpaca' or 'dolly'")
    if fields is not None:
        missing = [k for k in _REQUIRED if not fields.get(k) and (k != "output" or require_output)]
        unknown = set(fields) - {"instruction", "input", "output"}
        if missing or unknown:
            raise DataError(f"fields mapping must map 'instruction' and 'output' (and optionally 'input'); "
                            f"missing {missing}, unknown {sorted(unknown)}")
    report = report if report is not None else LoadReport()
    examples: list[Example] = []
    for where, record in _records(path):
        try:
            if isinstance(record, DataError):
                raise record
            examples.append(parse_record(record, where, format=format, fields=fields, require_output=require_output))
        except DataError as err:
            if on_error == "raise":
                raise
            report.skipped += 1
            report.errors.append(str(err))
    report.loaded = len(examples)
    if report.skipped:
        warnings.warn(f"{path}: skipped {report.skipped} malformed record(s); first: {report.errors[0]}",
                      stacklevel=2)
    if not examples:
        raise DataError(f"{path}: no usable records")
    return examples


def split_examples(
    examples: Sequence[Example],
    sizes: Sequence[int | float],
    seed: int = 0,
    *,
    stratify: bool = True,
) -> list[list[Example]]:
    """Shuffle by ``seed`` and cut into parts (e.g. pool / train / test).

    ``sizes`` are counts, or fractions summing to at most 1. With ``stratify`` each part takes every
    task (``Example.task``) in its share of the whole: 80 open_qa + 8 summarization + 8
    classification cut 24 / 24 / 24 gives each part 20 / 2 / 2 (largest remainders settle the
    rounding), not 24 open_qa to the parts a round-robin deal happens to cut last.
    """
    n = len(examples)
    counts = [int(round(s * n)) if isinstance(s, float) else int(s) for s in sizes]
    if any(c < 0 for c in counts) or sum(counts) > n:
        raise ValueError(f"split sizes {list(sizes)} need {sum(counts)} examples, only {n} given")
    rng = random.Random(seed)
    order = list(examples)
    rng.shuffle(order)
    if not stratify:
        starts = [sum(counts[:k]) for k in range(len(counts))]
        return [order[a:a + c] for a, c in zip(starts, counts)]
    by_task: dict[str | None, list[int]] = {}
    for position, ex in enumerate(order):
        by_task.setdefault(ex.task, []).append(position)
    left = {task: len(positions) for task, positions in by_task.items()}
    taken = {task: 0 for task in by_task}
    parts = []
    for c in counts:
        # This part's share of each task, in proportion to what is left (so later parts keep theirs).
        total = sum(left.values())
        quota = {task: c * k / total if total else 0.0 for task, k in left.items()}
        share = {task: int(q) for task, q in quota.items()}
        by_remainder = sorted(quota, key=lambda t: (share[t] - quota[t], by_task[t][0]))
        for task in by_remainder[:c - sum(share.values())]:
            share[task] += 1
        chosen = []
        for task, k in share.items():
            chosen += by_task[task][taken[task]:taken[task] + k]
            taken[task] += k
            left[task] -= k
        parts.append([order[position] for position in sorted(chosen)])  # shuffled order, tasks mixed
    return parts


def cut_queries(queries: Sequence[Example], what: str, max_chars: int = MAX_QUERY_CHARS) -> list[Example]:
    """``queries`` with any instruction or input longer than ``max_chars`` characters cut to it, with one
    warning naming ``what``, the first such query and the count.

    The renderer cuts a query to ``max_query_tokens`` (1,024) tokens; this cut comes before any
    tokenizer or encoder sees the text, so a 50 MB query costs what 16,384 characters cost, and
    results store the cut text. 16 characters per token is more than ordinary text's tokens hold,
    so for such text the renderer's token cut still decides what the model reads.
    """
    out, cut = [], []
    for index, q in enumerate(queries):
        if len(q.instruction) > max_chars or len(q.input) > max_chars:
            cut.append(index)
            q = Example(q.instruction[:max_chars], q.input[:max_chars], q.output, q.metadata)
        out.append(q)
    if cut:
        warnings.warn(f"{what}: {len(cut)} quer{'y' if len(cut) == 1 else 'ies'} longer than {max_chars:,} "
                      f"characters cut to it (first: #{cut[0]}, {queries[cut[0]].instruction[:40]!r})", stacklevel=2)
    return out


def examples_fingerprint(examples: Iterable[Example]) -> str:
    """A stable content hash of examples (for cache keys and training records)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.instruction, ex.input, ex.output], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


ExampleSource = str | Path | Sequence[Example] | Sequence[Mapping[str, Any]]
_PARTS = ("pool", "train", "test")


def resolve_examples(source: ExampleSource, part: str, *, seed: int = 0, what: str | None = None) -> list[Example]:
    """The one way a pool or query set is named: a built-in suite, a dataset file, or examples.

    Args:
        source: a built-in suite's name (``"builtin"``, ``"t0"``: its ``part``, split by ``seed``),
            a dataset file, or a sequence of :class:`Example` or of records (dicts).
        part: ``"pool"``, ``"train"`` or ``"test"``. A pool is de-duplicated (:func:`unique_pool`), so
            every user of a pool (env, selector, agents' fingerprints) indexes the same list.
        what: the name errors use (default: ``part``), e.g. an argument's name.
    """
    from .suite import SUITES, load_suite

    if part not in _PARTS:
        raise ValueError(f"part must be one of {', '.join(_PARTS)}, got {part!r}")
    what = what or part
    if isinstance(source, str) and source in SUITES:
        examples = getattr(load_suite(source, seed), part)
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"{what}: file not found: {source} (or a built-in suite: {', '.join(SUITES)})")
        examples = load_examples(source)
    else:
        examples = [e if isinstance(e, Example) else parse_record(e, f"{what}[{i}]") if isinstance(e, Mapping) else e
                    for i, e in enumerate(source)]
        if not examples or not all(isinstance(e, Example) for e in examples):
            raise TypeError(f"{what} must be a built-in suite ({', '.join(SUITES)}), a dataset path or a non-empty "
                            "sequence of Example (or of records: dicts with instruction/input/output)")
    return unique_pool(examples, what) if part == "pool" else list(examples)


def require_answers(examples: Sequence[Example], what: str) -> None:
    """Exemplars and scored queries need answers: refuse a set whose outputs are all empty."""
    if examples and not any(e.output.strip() for e in examples):
        raise DataError(f"{what}: every record's output is empty; exemplars and scored queries need answers")


def unique_pool(pool: Sequence[Example], what: str = "pool") -> list[Example]:
    """The pool without repeated records (a repeat would let an agent show one exemplar twice)."""
    first: dict[tuple[str, str, str], int] = {}
    repeats = []
    for i, e in enumerate(pool):
        key = (e.instruction, e.input, e.output)
        if key in first:
            repeats.append((i, first[key]))
        else:
            first[key] = i
    if not repeats:
        return list(pool)
    i, j = repeats[0]
    warnings.warn(f"{what}: dropped {len(repeats)} repeated record(s) (e.g. record {i} repeats record {j}); pool "
                  f"indices refer to the {len(first)} distinct records", stacklevel=3)
    return [pool[i] for i in sorted(first.values())]
