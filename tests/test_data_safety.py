"""Data that is valid JSON but no usable text is refused naming the file and line; JSONL saved as
``.json`` and a BOM on stdin are read as meant (issue 30, case 19)."""

import io
import json
import sys

import numpy as np
import pytest

from agents import make_agent
from pillow_env import builtin_suite
from pillow_env.cli import main
from pillow_env.data import DataError, load_examples, parse_json_line

POOL = builtin_suite(0).pool[:10]


@pytest.mark.parametrize("record, field", [
    ('{"instruction": "a \\ud800 b", "output": "x"}', "instruction"),
    ('{"instruction": "ok", "input": "\\udfff", "output": "x"}', "input"),
    ('{"instruction": "ok", "output": "x", "source": "\\ud83d"}', "source"),
])
def test_a_lone_surrogate_is_refused_naming_file_line_and_field(record, field, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "fine", "output": "y"}\n' + record + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: field '{field}' holds a lone surrogate"):
        load_examples(path)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_as_outputs(value, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(f'{{"instruction": "How much?", "output": {value}}}\n')
    with pytest.raises(DataError, match=rf"{path}:1: field 'output' is .*not a finite number"):
        load_examples(path)
    path.write_text('{"instruction": "How much?", "output": 2.5}\n')
    assert load_examples(path)[0].output == "2.5"  # finite numbers are still read as their text


def test_jsonl_saved_as_json_is_read_as_jsonl(tmp_path):
    records = [{"instruction": f"task {i}", "output": str(i)} for i in range(3)]
    path = tmp_path / "data.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [e.instruction for e in load_examples(path)] == ["task 0", "task 1", "task 2"]
    path.write_text(json.dumps(records[0]) + "\n" + '{"instruction": "broken", \n')
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):  # a bad line is named as in .jsonl
        load_examples(path)
    path.write_text(json.dumps({"data": records}, indent=2))  # one pretty-printed object is still JSON
    assert len(load_examples(path)) == 3


def test_a_bom_is_dropped_from_a_json_line():
    assert parse_json_line("\ufeff{\"instruction\": \"hi\"}", "<stdin>:1") == {"instruction": "hi"}
    assert parse_json_line("\ufeff{\"instruction\": \"hi\"}".encode(), "x:1") == {"instruction": "hi"}
    with pytest.raises(DataError, match="<stdin>:1: invalid JSON"):
        parse_json_line("{nope", "<stdin>:1")


def test_select_reads_a_bom_on_stdin_as_it_reads_files(tiny_backbone, hash_encoder, tmp_path, monkeypatch, capsys):
    import agents.selector as selector_module

    monkeypatch.setattr(selector_module, "load_renderer", lambda model: tiny_backbone.renderer)
    monkeypatch.setattr(selector_module, "load_encoder", lambda *a, **k: hash_encoder)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in POOL))
    agent_dir = make_agent("knn").save(tmp_path / "knn")
    monkeypatch.setattr(sys, "stdin", io.StringIO('\ufeff{"instruction": "Reverse the letters.", "input": "abc"}\n'))
    main(["select", "--agent-dir", str(agent_dir), "--pool", str(pool), "--queries", "-"])
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["query"] == {"instruction": "Reverse the letters.", "input": "abc"}


def test_a_missing_openai_tokenizer_fails_at_once_naming_it(monkeypatch):
    """Not a folder, not cached: the hub is asked once (here: unreachable), never retried for a minute."""
    import huggingface_hub
    from huggingface_hub import constants

    from pillow_env.backends import load_backend, load_renderer

    asked = []

    def unreachable(name, timeout=None):
        asked.append(name)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for load in (load_backend, load_renderer):
        with pytest.raises(FileNotFoundError, match="tokenizer 'no-such-tokenizer' .*no local folder.*"
                                                    "ConnectionError") as err:
            load("openai:http://127.0.0.1:9/v1#no-such-tokenizer")
        assert "\n" not in str(err.value)
    assert asked == ["no-such-tokenizer"] * 2
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        load_backend("openai:http://127.0.0.1:9/v1#no-such-tokenizer")
    assert len(asked) == 2  # offline: the hub is not asked at all


class CountingEncoder:
    """A stand-in encoder with a weights fingerprint (so its embeddings may be cached on disk)."""

    name, dim, fingerprint = "counting", 8, "weights-v1"

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return np.stack([np.random.default_rng(len(t)).standard_normal(self.dim) for t in texts]).astype(np.float32)


def test_pool_embeddings_are_cached_on_disk_and_damage_only_costs_a_recompute(tmp_path, monkeypatch):
    from pillow_env import resources

    monkeypatch.setenv("PILLOW_ENV_CACHE", str(tmp_path / "cache"))
    pool = builtin_suite(0).pool[:resources.DISK_MIN_EXAMPLES]
    encoder = CountingEncoder()
    first = resources.embed_examples(encoder, pool, with_output=True)
    (file,) = resources.embedding_cache_dir().glob("*.npy")
    resources.forget_embeddings()  # as a new process
    assert np.array_equal(resources.embed_examples(encoder, pool, with_output=True), first) and encoder.calls == 1
    resources.embed_examples(encoder, pool, with_output=False)  # another text: another entry
    encoder.fingerprint = "weights-v2"
    resources.embed_examples(encoder, pool, with_output=True)  # other weights: not reused
    assert encoder.calls == 3 and len(list(resources.embedding_cache_dir().glob("*.npy"))) == 3
    np.save(tmp_path / "pickled.npy", np.array([object()], dtype=object), allow_pickle=True)
    for damage in (b"not a numpy file", (tmp_path / "pickled.npy").read_bytes(), file.read_bytes()[:200]):
        file.write_bytes(damage)
        resources.forget_embeddings()
        encoder.fingerprint = "weights-v1"
        with pytest.warns(UserWarning, match=f"{file.name}: (unreadable|damaged) embedding cache"):
            again = resources.embed_examples(encoder, pool, with_output=True)
        assert np.array_equal(again, first)
    small = pool[:resources.DISK_MIN_EXAMPLES - 1]
    resources.embed_examples(encoder, small, with_output=True)  # a few queries: memory only
    assert len(list(resources.embedding_cache_dir().glob("*.npy"))) == 3


def test_an_unwritable_embedding_cache_warns_and_computes(tmp_path, monkeypatch):
    from pillow_env import resources

    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("PILLOW_ENV_CACHE", str(blocker))
    resources.forget_embeddings()
    pool = builtin_suite(0).pool[:resources.DISK_MIN_EXAMPLES]
    with pytest.warns(UserWarning, match="embeddings not cached: cannot write"):
        found = resources.embed_examples(CountingEncoder(), pool, with_output=True)
    assert found.shape == (len(pool), CountingEncoder.dim)


def test_encoders_without_a_fingerprint_are_never_cached_on_disk(tmp_path, monkeypatch, hash_encoder):
    from pillow_env import resources

    monkeypatch.setenv("PILLOW_ENV_CACHE", str(tmp_path / "cache"))
    resources.embed_examples(hash_encoder, builtin_suite(0).pool, with_output=True)
    assert not (tmp_path / "cache").exists()
