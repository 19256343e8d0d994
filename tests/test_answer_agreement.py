"""The answer-agreement diagnostic's core functions on a hand-made 4-record input (no model, no files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pillow_env.data import Example

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_answer_agreement.py"
_spec = importlib.util.spec_from_file_location("bench_answer_agreement", _PATH)
aa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aa)

POOL = [Example("Same?", "a", "Yes", {"task": "paws"}), Example("Same?", "b", "no", {"task": "paws"}),
        Example("Name it.", "c", "Paris", {"task": "open"}),
        Example("Same?", "d", "  YES ", {"task": "paws"})]


def record(selection, reference, reward, generation=""):
    return {"selection": selection, "reference": reference, "reward": reward, "generation": generation}


# Four queries, one per cell: kNN (base) and a learner (other), references all "yes".
BASE = [record([2, 1], "yes", 0.2), record([1, 0], "Yes", 0.9), record([3, 0], "yes", 0.8),
        record([2, 1], "yes", 0.1)]
OTHER = [record([1, 3], "yes", 0.7), record([2, 1], "Yes", 0.4), record([0, 3], "yes", 1.0),
         record([1, 2], "yes", 0.3)]


def test_gain_cells_split_each_query_into_its_cell():
    cells = aa.gain_cells(BASE, OTHER, POOL)
    assert {c: v["n"] for c, v in cells.items()} == {"gained": 1, "lost": 1, "both": 1, "neither": 1}
    assert cells["gained"]["reward_diff"] == pytest.approx(0.5)
    assert cells["lost"]["reward_diff"] == pytest.approx(-0.5)
    assert cells["both"]["reward_diff"] == pytest.approx(0.2)
    assert cells["neither"]["reward_diff"] == pytest.approx(0.2)
    assert sum(v["reward_diff"] for v in cells.values()) == pytest.approx(
        sum(o["reward"] - b["reward"] for b, o in zip(BASE, OTHER)))


def test_agreement_compares_answers_after_lowercasing_and_collapsing_spaces():
    got = aa.agreement(BASE, POOL)  # queries 2 and 3 hold "Yes" / "  YES "
    assert got["share"] == 0.5
    assert got["reward_with"] == pytest.approx(0.85) and got["reward_without"] == pytest.approx(0.15)


def test_copied_names_the_exemplar_the_generation_repeats():
    assert aa.copied(record([1, 0], "yes", 0, " YES"), POOL) == "last"
    assert aa.copied(record([1, 0], "yes", 0, "No"), POOL) == "first"
    assert aa.copied(record([3, 0], "yes", 0, "yes"), POOL) == "both"
    assert aa.copied(record([1, 0], "yes", 0, "maybe"), POOL) == "neither"


def test_label_set_and_template_kinds():
    labels = {"yes", "no"}
    assert aa.label_set([0, 3], "yes", POOL, labels) == "one label = reference"
    assert aa.label_set([0, 3], "no", POOL, labels) == "one label != reference"
    assert aa.label_set([1, 0], "no", POOL, labels) == "two labels"
    assert aa.label_set([2, 0], "yes", POOL, labels) == "off-template"
    distinct, kind = aa.kinds_of(POOL)
    assert distinct == {"paws": 2, "open": 1} and kind == {"paws": "few", "open": "few"}
