"""Render (exemplars, query) into the text a causal LM sees.

With a chat template the exemplars become earlier user/assistant turns (how instruction-tuned
models saw demonstrations in training); without one, an Alpaca-style text template is used. The
same renderer serves the env and PLW training, so train and inference inputs match exactly.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .data import Example

__all__ = ["PromptRenderer", "user_text", "ALPACA_HEADER"]

ALPACA_HEADER = "Below are instructions that describe tasks. Write a response that completes each request.\n\n"


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def user_text(example: Example) -> str:
    """The user's side of an example: instruction, then its input (if any) on a new paragraph."""
    return f"{example.instruction}\n\n{example.input}" if example.input else example.instruction


def _alpaca_block(example: Example) -> str:
    block = f"### Instruction:\n{example.instruction}\n\n"
    if example.input:
        block += f"### Input:\n{example.input}\n\n"
    return block + "### Response:\n"


@dataclass
class PromptRenderer:
    """Turns exemplars + query into model input for one tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer; its chat template is used when it has one.
        use_chat_template: force the chat (``True``) or Alpaca (``False``) format; ``None`` = auto.
        max_exemplar_tokens: exemplars whose input or output exceed this many tokens are cut to it,
            with a warning naming the exemplar (never silently). ``None`` = no limit.
        max_query_tokens: the same for the query's instruction and input (a 1 MB query would
            otherwise make one step run for minutes). The cut text is part of every cache key.
    """

    tokenizer: Any
    use_chat_template: bool | None = None
    max_exemplar_tokens: int | None = 256
    max_query_tokens: int | None = 1024

    def __post_init__(self) -> None:
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if self.use_chat_template is None:
            self.use_chat_template = has_template
        elif self.use_chat_template and not has_template:
            raise ValueError("use_chat_template=True but the tokenizer has no chat_template")

    @property
    def fingerprint(self) -> str:
        template = self.tokenizer.chat_template if self.use_chat_template else ALPACA_HEADER
        return f"{'chat' if self.use_chat_template else 'alpaca'}:{hash_text(str(template))}:{self.max_exemplar_tokens}"

    def _truncate(self, text: str, what: str, setting: str = "max_exemplar_tokens") -> str:
        limit = getattr(self, setting)
        if limit is None or not text or len(text.encode()) <= limit:  # a token covers at least one byte
            return text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text
        warnings.warn(f"{what} has {len(ids)} tokens; truncated to {setting}={limit}", stacklevel=4)
        return self.tokenizer.decode(ids[:limit])

    def _fit_query(self, query: Example) -> Example:
        label = f"query ({query.instruction[:40]!r})"
        instruction = self._truncate(query.instruction, label + " instruction", "max_query_tokens")
        text = self._truncate(query.input, label + " input", "max_query_tokens")
        return query if (instruction, text) == (query.instruction, query.input) else \
            Example(instruction, text, query.output, query.metadata)

    def _fit(self, exemplars: Sequence[Example]) -> list[Example]:
        fitted = []
        for i, ex in enumerate(exemplars):
            label = f"exemplar {i} ({ex.instruction[:40]!r})"
            fitted.append(Example(ex.instruction, self._truncate(ex.input, label + " input"),
                                  self._truncate(ex.output, label + " output"), ex.metadata))
        return fitted

    def _messages(self, exemplars: Sequence[Example], query: Example) -> list[dict[str, str]]:
        messages = []
        for ex in exemplars:
            messages += [{"role": "user", "content": user_text(ex)}, {"role": "assistant", "content": ex.output}]
        return messages + [{"role": "user", "content": user_text(query)}]

    def messages(self, exemplars: Sequence[Example], query: Example) -> list[dict[str, str]] | None:
        """The chat messages :meth:`render` formats (``None`` for the plain-text template): what a
        user hands to a chat-completions API instead of the text."""
        return self._messages(self._fit(exemplars), self._fit_query(query)) if self.use_chat_template else None

    def render(self, exemplars: Sequence[Example], query: Example) -> str:
        """The prompt: exemplars as solved turns, then the query awaiting its answer."""
        exemplars, query = self._fit(exemplars), self._fit_query(query)
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(self._messages(exemplars, query), tokenize=False,
                                                      add_generation_prompt=True)
        text = ALPACA_HEADER
        for ex in exemplars:
            text += _alpaca_block(ex) + ex.output + "\n\n"
        return text + _alpaca_block(query)

    def render_pair(self, exemplars: Sequence[Example], example: Example) -> tuple[str, str]:
        """(prompt, completion) for training: the completion is the answer plus the end-of-turn text.

        ``prompt + completion`` is exactly the rendered full conversation, so token weights can be
        assigned by character offset even where the tokenizer merges across the boundary.
        """
        prompt = self.render(exemplars, example)
        if self.use_chat_template:
            full = self.tokenizer.apply_chat_template(
                self._messages(self._fit(exemplars), self._fit_query(example))
                + [{"role": "assistant", "content": example.output}],
                tokenize=False)
            if not full.startswith(prompt):
                raise ValueError("chat template renders the answered conversation with a different prefix "
                                 "than the open one; cannot split prompt and completion")
            return prompt, full[len(prompt):]
        eos = self.tokenizer.eos_token or ""
        return prompt, example.output + eos
