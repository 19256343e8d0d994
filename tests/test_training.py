import json

import pytest
import torch

from pillow_env import Example, PromptRenderer
from pillow_env.backends.hf import Backbone
from pillow_env.training import (TRAINING_RECORD, TrainConfig, collate, tokenize_weighted, train_full, train_lora,
                                 weighted_loss)

from .conftest import make_backbone

EXAMPLES = [Example("Reverse the letters of this word.", w, w[::-1]) for w in ["apple", "river", "fig", "monkey"]] + \
           [Example("Write the word in capital letters.", w, w.upper()) for w in ["pear", "candle", "lemon", "tiger"]]


def losses(backbone, plw, examples=EXAMPLES):
    seqs = [tokenize_weighted(backbone.renderer, ex, plw) for ex in examples]
    batch = collate(seqs, backbone.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return seqs, batch, logits


@pytest.mark.parametrize("chat", [True, False])
def test_plw_zero_is_completion_only_and_one_is_standard_loss(chat):
    backbone = make_backbone(chat=chat)
    seqs, batch, logits = losses(backbone, 0.0)
    completion_labels = batch["input_ids"].clone()
    completion_labels[batch["weights"] == 0] = -100
    with torch.no_grad():
        hf_completion = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       labels=completion_labels).loss
    assert weighted_loss(logits, batch["input_ids"], batch["weights"]).item() == pytest.approx(hf_completion.item(),
                                                                                                rel=1e-5)
    seqs1, batch1, logits1 = losses(backbone, 1.0)
    labels = batch1["input_ids"].clone()
    labels[batch1["attention_mask"] == 0] = -100
    with torch.no_grad():
        hf_full = backbone.model(input_ids=batch1["input_ids"], attention_mask=batch1["attention_mask"],
                                 labels=labels).loss
    assert weighted_loss(logits1, batch1["input_ids"], batch1["weights"]).item() == pytest.approx(hf_full.item(),
                                                                                                  rel=1e-5)


def test_intermediate_plw_follows_the_formula():
    backbone = make_backbone()
    _, batch, logits = losses(backbone, 1.0)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           batch["input_ids"][:, 1:].reshape(-1), reduction="none")
    _, batch0, _ = losses(backbone, 0.0)
    completion = batch0["weights"][:, 1:].reshape(-1) == 1
    prompt = (batch["weights"][:, 1:].reshape(-1) == 1) & ~completion
    sp, np_, sc, nc = ce[prompt].sum(), prompt.sum(), ce[completion].sum(), completion.sum()
    values = []
    for plw in (0.0, 0.01, 0.1, 0.25, 1.0):
        _, b, lg = losses(backbone, plw)
        value = weighted_loss(lg, b["input_ids"], b["weights"]).item()
        assert value == pytest.approx(((plw * sp + sc) / (plw * np_ + nc)).item(), rel=1e-5)
        values.append(value)
    assert values == sorted(values) or values == sorted(values, reverse=True)  # monotone from L(0) to L(1)


@pytest.mark.parametrize("chat", [True, False])
def test_completion_tokens_are_exactly_the_answer(chat):
    backbone = make_backbone(chat=chat)
    ex = Example("Reverse the letters of this word.", "apple", "elppa")
    seq = tokenize_weighted(backbone.renderer, ex, 0.1)
    completion = [t for t, w in zip(seq.input_ids, seq.weights) if w == 1.0]
    prompt_part = [t for t, w in zip(seq.input_ids, seq.weights) if w != 1.0]
    end = "<|im_end|>\n" if chat else "</s>"
    assert backbone.tokenizer.decode(completion) == "elppa" + end
    assert "elppa" not in backbone.tokenizer.decode(prompt_part)
    assert seq.weights[0] == 0.0 and set(seq.weights[1:]) <= {0.1, 1.0}


def test_token_merged_across_the_boundary_counts_as_completion():
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    ex = Example("Say it.", "", "zq")
    prompt = PromptRenderer(make_backbone(chat=False).tokenizer).render([], ex)
    raw = Tokenizer(models.BPE())  # no pre-tokenizer: merges may cross "\n" into the answer
    alphabet = len(set(prompt + "zq"))  # characters, the boundary merges "\n"+"z"+"q", and little else
    raw.train_from_iterator(["\nzq"] * 100 + [prompt],
                            trainers.BpeTrainer(vocab_size=alphabet + 4, special_tokens=["</s>", "<pad>"],
                                                show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>")
    renderer = PromptRenderer(tok)
    prompt, completion = renderer.render_pair([], ex)
    enc = tok(prompt + completion, return_offsets_mapping=True)
    straddling = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < len(prompt) < e]
    assert straddling, "the test tokenizer should merge across the boundary"
    seq = tokenize_weighted(renderer, ex, 0.0)
    assert all(seq.weights[i] == 1.0 for i in straddling)
    assert "zq" in tok.decode([t for t, w in zip(seq.input_ids, seq.weights) if w == 1.0])


def test_short_fit_lowers_the_loss_and_adapter_round_trips(tiny_model_dir, tmp_path):
    base = Backbone.from_pretrained(str(tiny_model_dir))
    _, batch, logits = losses(base, 0.1)
    before = weighted_loss(logits, batch["input_ids"], batch["weights"]).item()
    out = train_lora(base, EXAMPLES, TrainConfig(plw=0.1, lr=3e-2, batch_size=4, max_steps=24, epochs=20,
                                                 lora_r=8, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"]), output_dir=tmp_path / "adapter", progress=False)
    _, batch, logits = losses(base, 0.1)
    after = weighted_loss(logits, batch["input_ids"], batch["weights"]).item()
    assert after < before - 1.0, (before, after)
    record = json.loads((out / TRAINING_RECORD).read_text())
    assert record["plw"] == 0.1 and record["base_model"] == str(tiny_model_dir) and len(record["loss_curve"]) == 24
    assert record["generation_ratio"] == pytest.approx(record["mean_completion_tokens"] / record["mean_prompt_tokens"])
    assert (out / "adapter_model.safetensors").is_file() and not (out / "checkpoint").exists()
    loaded = Backbone.from_pretrained(str(tiny_model_dir), adapter=out)
    ids = base.tokenizer("Reverse the letters", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**ids).logits, base.model(**ids).logits)


def test_adapter_on_the_wrong_base_is_a_clear_error(tiny_model_dir, tmp_path):
    base = Backbone.from_pretrained(str(tiny_model_dir))
    out = train_lora(base, EXAMPLES[:2], TrainConfig(max_steps=1, batch_size=2), output_dir=tmp_path / "a",
                     progress=False)
    other = tmp_path / "other-base"
    make_backbone(seed=5).model.save_pretrained(other)
    make_backbone().tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="was trained on base model"):
        Backbone.from_pretrained(str(other), adapter=out)


def test_interrupted_training_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, monkeypatch):
    import pillow_env.training as training

    config = TrainConfig(plw=0.25, lr=1e-3, batch_size=2, max_steps=6, epochs=10, checkpoint_every=2)
    straight = train_lora(Backbone.from_pretrained(str(tiny_model_dir)), EXAMPLES, config,
                          output_dir=tmp_path / "straight", progress=False)
    real_save = training._save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        if args[4] == 4:
            raise KeyboardInterrupt("killed after the step-4 checkpoint")

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_lora(Backbone.from_pretrained(str(tiny_model_dir)), EXAMPLES, config, output_dir=tmp_path / "r",
                   progress=False)
    assert json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())["step"] == 4
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    resumed = train_lora(Backbone.from_pretrained(str(tiny_model_dir)), EXAMPLES, config, output_dir=tmp_path / "r",
                         progress=False)
    a = json.loads((straight / TRAINING_RECORD).read_text())["loss_curve"]
    b = json.loads((resumed / TRAINING_RECORD).read_text())["loss_curve"]
    assert [round(x["loss"], 5) for x in a] == [round(x["loss"], 5) for x in b]
    from safetensors.torch import load_file

    for key, value in load_file(str(straight / "adapter_model.safetensors")).items():
        torch.testing.assert_close(load_file(str(resumed / "adapter_model.safetensors"))[key], value)


def test_bad_plw_is_rejected():
    with pytest.raises(ValueError, match=r"plw must be in \[0, 1\]"):
        TrainConfig(plw=1.5)


def test_sft_changes_every_weight_and_lora_only_the_adapters(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    config = TrainConfig(plw=0.0, max_steps=3, batch_size=4, lr=1e-2, seed=0)
    before = {k: v.clone() for k, v in Backbone.from_pretrained(str(tiny_model_dir)).model.state_dict().items()}
    sft = train_full(str(tiny_model_dir), EXAMPLES, config, output_dir=tmp_path / "sft", progress=False)
    after = Backbone.from_pretrained(str(sft)).model.state_dict()  # loads as a plain model folder
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == {k for k, v in before.items() if v.dtype.is_floating_point} - {"model.rotary_emb.inv_freq"}
    record = json.loads((sft / TRAINING_RECORD).read_text())
    assert record["trainable_parameters"] == sum(v.numel() for k, v in before.items() if k in changed)

    lora = train_lora(str(tiny_model_dir), EXAMPLES, config, output_dir=tmp_path / "lora", progress=False)
    adapter = load_file(str(lora / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    lora_record = json.loads((lora / TRAINING_RECORD).read_text())
    assert 0 < lora_record["trainable_parameters"] < record["trainable_parameters"] / 10
    base_again = Backbone.from_pretrained(str(tiny_model_dir)).model.state_dict()
    assert all(torch.equal(before[k], base_again[k]) for k in before)  # the base folder itself is untouched
