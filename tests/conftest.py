"""Shared fixtures: a tiny randomly initialised Llama and tokenizer built in code (no downloads)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["Reverse the letters of this word. apple elppa", "Write the word in capital letters. river RIVER",
          "The movie was wonderful. positive", "The meal was awful. negative", "What is 3 + 4? 7",
          "### Instruction: ### Input: ### Response:", "Below are instructions that describe tasks.",
          "sort these words alphabetically: pear, apple, fig"] * 4


def in_process_agents() -> list[str]:
    """Registered agents that train in this process on any engine; ``rllib_ppo`` trains in Ray worker
    processes that rebuild the env by name, so tests/test_rllib.py covers it."""
    from agents import AGENTS

    return [name for name in AGENTS if name != "rllib_ppo"]


def make_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="<|im_end|>" if chat else "</s>")
    if chat:
        fast.chat_template = CHATML
    return fast


def make_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def make_backbone(chat: bool = True, seed: int = 0):
    from pillow_env.backends.hf import Backbone

    tokenizer = make_tokenizer(chat)
    return Backbone(make_model(len(tokenizer), seed), tokenizer, name="tiny-llama")


@pytest.fixture
def tiny_backbone():
    return make_backbone(chat=True)


@pytest.fixture
def tiny_alpaca_backbone():
    return make_backbone(chat=False)


@pytest.fixture
def tiny_model_dir(tmp_path):
    backbone = make_backbone(chat=True)
    folder = tmp_path / "tiny-llama"
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return folder


class HashEncoder:
    """A deterministic stand-in for MiniLM: normalised character-trigram counts."""

    name = "hash-encoder"
    dim = 64

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            padded = f"  {text.lower()}  "
            for j in range(len(padded) - 2):
                out[i, zlib.crc32(padded[j:j + 3].encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


@pytest.fixture
def hash_encoder():
    return HashEncoder()
