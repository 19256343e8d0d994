"""Rebuild ``pillow_env/suite_data/t0.jsonl.gz`` (the ``t0`` suite) byte for byte from the source.

The source is the T0 training mixture as published in the self-instruct repository
(Apache-2.0), one JSONL file per prompt template under ``data/finetuning/t0_train_50k/data_per_template``::

    python benchmarks/data/build_t0_suite.py --mirror PATH_TO_A_CLONE_OR_GIT_DIR [--out FILE]

Only the templates of the source datasets in ``DATASETS`` are read. The templates of ``RESERVED``
datasets are kept for held-out checks and are never opened. Records whose prompt is over 300
characters, whose answer is empty or over 16 words, or whose prompt occurs with another answer too
are dropped, as are repeats; of the templates whose median
answer is then at most 8 words and that still hold ``MIN_EXAMPLES`` distinct underlying examples,
the ``PER_DATASET`` with most examples are taken from each source dataset.

Templates of one source dataset re-use the same underlying examples, so each record gets an
``example`` id: two records of one dataset that share ``LINK`` rare 8-word spans of their prompts
(spans found in at most ``RARE`` records, so template wording never links two examples; a prompt
shorter than that must match whole) get the same id, and ids are closed under that link. The suite
splits by that id, so no passage or question is in two of pool, train and test.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import statistics
import subprocess
from pathlib import Path

COMMIT = "0b26ccaa415992100fa32df62d41b994cf928e23"
FOLDER = "data/finetuning/t0_train_50k/data_per_template"
DATASETS = ("app_reviews", "commonsense_qa", "cosmos_qa", "kilt_tasks_hotpotqa", "paws_labeled_final", "qasc",
            "quarel", "quartz", "social_i_qa", "wiki_qa", "wiqa")
RESERVED = ("ag_news", "rotten_tomatoes", "glue_mrpc", "gigaword", "common_gen", "yelp_review_full", "trec",
            "amazon_polarity", "sciq", "glue_qqp", "dbpedia_14", "imdb")
MAX_PROMPT_CHARS = 300
MAX_ANSWER_WORDS = 16
MAX_MEDIAN_ANSWER_WORDS = 8
MIN_EXAMPLES = 68
PER_DATASET = 4
SPAN = 8
RARE = 40
LINK = 4
OUT = Path(__file__).resolve().parents[2] / "pillow_env" / "suite_data" / "t0.jsonl.gz"


def _git(mirror: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(mirror), *args], check=True, capture_output=True, text=True).stdout


def _templates(mirror: Path) -> dict[str, list[str]]:
    """Template file names per source dataset; names of reserved datasets are never returned."""
    names = [Path(p).name for p in _git(mirror, "ls-tree", "--name-only", f"{COMMIT}:{FOLDER}").split()]
    out: dict[str, list[str]] = {}
    for name in sorted(names):
        if name.startswith(RESERVED):
            continue
        dataset = next((d for d in DATASETS if name.startswith(d + "_")), None)
        if dataset is not None:
            out.setdefault(dataset, []).append(name)
    return out


def _rows(mirror: Path, name: str) -> list[dict[str, str]]:
    """The template's usable records: a prompt that occurs with more than one answer says too little
    to judge an answer by (e.g. "Generate a 5-star review about an app ..."), so it is left out."""
    answers: dict[str, set[str]] = {}
    for line in _git(mirror, "show", f"{COMMIT}:{FOLDER}/{name}").splitlines():
        record = json.loads(line)
        prompt = record["prompt"].strip()
        answer = record["completion"].replace("<|endoftext|>", "").strip()
        if len(prompt) <= MAX_PROMPT_CHARS and answer and len(answer.split()) <= MAX_ANSWER_WORDS:
            answers.setdefault(prompt, set()).add(answer)
    return [{"instruction": prompt, "output": next(iter(a))} for prompt, a in answers.items() if len(a) == 1]


def _spans(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    if len(words) <= SPAN:
        return {" ".join(words)}
    return {" ".join(words[i:i + SPAN]) for i in range(len(words) - SPAN + 1)}


def _example_ids(prompts: list[str]) -> list[int]:
    """Union records that share ``LINK`` rare spans; a record's id is its component's first record."""
    parent = list(range(len(prompts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    spans = [_spans(p) for p in prompts]
    holders: dict[str, list[int]] = {}
    for i, own in enumerate(spans):
        for span in own:
            holders.setdefault(span, []).append(i)
    shared: dict[tuple[int, int], int] = {}
    for members in holders.values():
        if 2 <= len(members) <= RARE:
            for k, a in enumerate(members):
                for b in members[k + 1:]:
                    shared[a, b] = shared.get((a, b), 0) + 1
    for (a, b), count in sorted(shared.items()):
        if count >= min(LINK, len(spans[a]), len(spans[b])):
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(len(prompts))]


def build(mirror: Path) -> bytes:
    records: list[dict[str, str]] = []
    for dataset, names in _templates(mirror).items():
        rows = []
        for name in names:
            template_rows = _rows(mirror, name)
            words = [len(r["output"].split()) for r in template_rows]
            if words and statistics.median(words) <= MAX_MEDIAN_ANSWER_WORDS:
                rows += [{**row, "task": name.removesuffix(".jsonl"), "dataset": dataset} for row in template_rows]
        ids = _example_ids([r["instruction"] for r in rows])
        examples: dict[str, set[int]] = {}
        for row, i in zip(rows, ids):
            examples.setdefault(row["task"], set()).add(i)
        ranked = sorted((-len(ex), task) for task, ex in examples.items() if len(ex) >= MIN_EXAMPLES)
        chosen = {task for _, task in ranked[:PER_DATASET]}
        records.extend({**row, "example": f"{dataset}/{i}"} for row, i in zip(rows, ids) if row["task"] in chosen)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        for record in records:
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
