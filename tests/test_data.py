import json

import pytest

from pillow_env import DataError, Example, LoadReport, load_examples, split_examples


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_alpaca_json_array(tmp_path):
    f = write(tmp_path / "a.json", json.dumps([
        {"instruction": "Reverse.", "input": "abc", "output": "cba", "source": "mine"},
        {"instruction": "Say hi.", "output": "hi"},
    ]))
    exs = load_examples(f)
    assert exs[0] == Example("Reverse.", "abc", "cba")
    assert exs[0].metadata == {"source": "mine"}
    assert exs[1].input == ""


def test_dolly_jsonl_keeps_category(tmp_path):
    rows = [{"instruction": "Summarise.", "context": "Long text.", "response": "Short.", "category": "summarization"},
            {"instruction": "Name a colour.", "context": "", "response": "red", "category": "open_qa"}]
    f = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    exs = load_examples(f, format="dolly")
    assert [e.input for e in exs] == ["Long text.", ""]
    assert [e.output for e in exs] == ["Short.", "red"]
    assert [e.task for e in exs] == ["summarization", "open_qa"]
    assert load_examples(f) == exs  # auto-detected


def test_field_mapping(tmp_path):
    f = write(tmp_path / "q.jsonl", json.dumps({"question": "2+2?", "answer": 4, "id": 7}) + "\n")
    (ex,) = load_examples(f, fields={"instruction": "question", "output": "answer"})
    assert (ex.instruction, ex.input, ex.output, dict(ex.metadata)) == ("2+2?", "", "4", {"id": 7})


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_examples(f)


def test_missing_field_names_field_and_index(tmp_path):
    f = write(tmp_path / "bad.json", json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(DataError, match=r"bad\.json\[1\]: missing field 'output'"):
        load_examples(f, format="alpaca")


def test_wrong_type_names_field(tmp_path):
    f = write(tmp_path / "bad.jsonl", json.dumps({"instruction": ["x"], "output": "b"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'instruction' must be a string"):
        load_examples(f)


def test_skip_reports_count(tmp_path):
    f = write(tmp_path / "mixed.jsonl", '{"instruction": "a", "output": "b"}\nnot json\n{"instruction": "c"}\n')
    report = LoadReport()
    with pytest.warns(UserWarning, match="skipped 2"):
        exs = load_examples(f, on_error="skip", report=report)
    assert len(exs) == 1 and report.loaded == 1 and report.skipped == 2
    assert "mixed.jsonl:2" in report.errors[0] and "mixed.jsonl:3" in report.errors[1]


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_examples(tmp_path / "nope.json")
    f = write(tmp_path / "a.json", "[]")
    with pytest.raises(DataError, match="no usable records"):
        load_examples(f)
    with pytest.raises(DataError, match="unknown format"):
        load_examples(f, format="csv")
    with pytest.raises(DataError, match="missing \\['output'\\]"):
        load_examples(f, fields={"instruction": "q"})


def test_split_is_reproducible_disjoint_and_stratified():
    exs = [Example(f"i{k}", str(k), "o", {"task": f"t{k % 4}"}) for k in range(40)]
    a = split_examples(exs, [8, 20, 12], seed=3)
    b = split_examples(exs, [8, 20, 12], seed=3)
    c = split_examples(exs, [8, 20, 12], seed=4)
    assert a == b and a != c
    assert [len(p) for p in a] == [8, 20, 12]
    assert len({e.input for p in a for e in p}) == 40
    assert {e.task for e in a[0]} == {"t0", "t1", "t2", "t3"}
    with pytest.raises(ValueError, match="need 50"):
        split_examples(exs, [25, 25])
