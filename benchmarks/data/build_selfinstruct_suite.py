"""Rebuild ``pillow_env/suite_data/selfinstruct.jsonl.gz`` (the ``selfinstruct`` suite) byte for byte.

The source is the self-instruct repository (Apache-2.0): its 175 human-written seed tasks
(``data/seed_tasks.jsonl``) and its 252 expert-written user-oriented tasks
(``human_eval/user_oriented_instructions.jsonl``); no other file of it is read::

    python benchmarks/data/build_selfinstruct_suite.py --mirror PATH_TO_A_CLONE_OR_GIT_DIR [--out FILE]

Every task of both files holds exactly one instance (an input, possibly empty, and a human-written
output), so each task gives one record; a task with more instances would fail the build rather than
silently lose some. A user-oriented task whose instruction an earlier task (seed or user-oriented)
already has is left out (two of them, both "Answer the following question.", a seed task's too), so
every instruction of the file is unique and the suite never has one instruction in two parts.
Fields are stripped of surrounding whitespace; each record keeps its ``task`` (the source id), its
``source`` (``seed`` or ``user_oriented``) and the source's metadata: ``name`` and
``is_classification`` for a seed task, ``motivation_app`` for a user-oriented one. The records are
written seed tasks first, each file in its own order.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
from pathlib import Path

COMMIT = "0b26ccaa415992100fa32df62d41b994cf928e23"
FILES = {"seed": "data/seed_tasks.jsonl", "user_oriented": "human_eval/user_oriented_instructions.jsonl"}
METADATA = {"seed": ("name", "is_classification"), "user_oriented": ("motivation_app",)}
OUT = Path(__file__).resolve().parents[2] / "pillow_env" / "suite_data" / "selfinstruct.jsonl.gz"


def _tasks(mirror: Path, source: str) -> list[dict]:
    text = subprocess.run(["git", "-C", str(mirror), "show", f"{COMMIT}:{FILES[source]}"], check=True,
                          capture_output=True, text=True).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _record(task: dict, source: str) -> dict:
    where = f"{FILES[source]}: {task.get('id')}"
    if len(task["instances"]) != 1:
        raise ValueError(f"{where}: expected one instance, found {len(task['instances'])}")
    (instance,) = task["instances"]
    record = {"instruction": task["instruction"].strip(), "input": instance["input"].strip(),
              "output": instance["output"].strip(), "task": task["id"], "source": source}
    record.update({name: task[name] for name in METADATA[source]})
    if not (record["instruction"] and record["output"]):
        raise ValueError(f"{where}: empty instruction or output")
    return record


def build(mirror: Path) -> bytes:
    seed = [_record(task, "seed") for task in _tasks(mirror, "seed")]
    taken = {r["instruction"] for r in seed}
    user = []
    for record in (_record(task, "user_oriented") for task in _tasks(mirror, "user_oriented")):
        if record["instruction"] not in taken:
            taken.add(record["instruction"])
            user.append(record)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        for record in seed + user:
            gz.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode())
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", type=Path, required=True,
                        help=f"a clone (or bare git dir) of the self-instruct repository holding commit {COMMIT}")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the suite file")
    args = parser.parse_args()
    data = build(args.mirror)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
