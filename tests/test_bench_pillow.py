"""benchmarks/bench_pillow.py end to end on the tiny model and a small Dolly-shaped file."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("bench_pillow", ROOT / "benchmarks" / "bench_pillow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dolly_fixture(path: Path) -> Path:
    """Dolly's shape (instruction, context, response, category), written for this test."""
    words = ["apple", "river", "candle", "garden", "planet", "silver", "window", "forest", "pencil", "rocket",
             "castle", "butter", "monkey", "orange", "thunder", "mirror", "basket", "dragon", "lemon", "violin"]
    rows = []
    for i, w in enumerate(words):
        rows.append({"instruction": "Reverse the letters of the word in the context.", "context": w,
                     "response": w[::-1], "category": "closed_qa"})
        rows.append({"instruction": f"Write {w} in capital letters.", "context": "", "response": w.upper(),
                     "category": "open_qa"})
    rows.append({"instruction": "Too long " * 200, "context": "", "response": "x", "category": "open_qa"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bench_pillow_builds_every_row(tiny_model_dir, tmp_path):
    data = dolly_fixture(tmp_path / "dolly.jsonl")
    out = tmp_path / "pillow"
    argv = ["--data", str(data), "--model", str(tiny_model_dir), "--pool-size", "6", "--train-size", "14",
            "--test-size", "6", "--dev-size", "4", "--plw", "0,0.1", "--lora-steps", "2", "--sft-steps", "2",
            "--episodes", "8", "--max-new-tokens", "3", "--batch-size", "4", "--out", str(out)]
    summary = _module().main(argv)
    rows = {(r["model"], r["agent"]): r for r in summary["rows"]}
    assert list(rows) == [(m, a) for m, a, _ in _module().ROWS]  # every row of the paper's table
    assert rows[("lora", "zero_shot")]["paired"] is None
    assert all(r["paired"]["n"] == 6 for k, r in rows.items() if k != ("lora", "zero_shot"))
    lora, sft = rows[("lora", "zero_shot")]["cost"], rows[("sft", "zero_shot")]["cost"]
    assert 0 < lora["trainable_parameters"] < sft["trainable_parameters"] and sft["peak_rss_mb"] > 0
    assert rows[("lora", "listwise")]["selection_calls"] > 0 and rows[("base", "knn")]["selection_calls"] == 0
    assert summary["settings"]["plw"] in (0.0, 0.1) and set(summary["settings"]["plw_scores"]) == {"0", "0.1"}
    assert summary["settings"]["test"] == 6
    pillow_vs_sft = summary["comparisons"][0]
    assert pillow_vs_sft["a"].endswith("(PILLOW)") and pillow_vs_sft["b"] == "SFT zero-shot"
    assert pillow_vs_sft["paired"]["n"] == 6 and len(summary["comparisons"]) == 3
    assert "(PILLOW)" in (out / "results.md").read_text() and (out / "pillow.png").read_bytes()[:4] == b"\x89PNG"
    settings = json.loads((out / "bench-lora" / "results.json").read_text())["settings"]
    assert settings["adapter"] == str(out / "lora")  # learned prompts trained against the LoRA model
    again = _module().main(argv)  # a re-run trains nothing again and gives the same table
    assert [r["reward"] for r in again["rows"]] == [r["reward"] for r in summary["rows"]]
    changed = [*argv[:argv.index("--lora-steps") + 1], "3", *argv[argv.index("--lora-steps") + 2:]]
    with pytest.raises(SystemExit, match="trained with other settings"):
        _module().main(changed)  # never a stale adapter reused under new settings
