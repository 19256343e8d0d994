"""Any chat-completions endpoint as the LLM: hosted chat models, gateways, and every server with
``/v1/chat/completions`` (vLLM, SGLang, TGI, llama.cpp, ``transformers serve``).

``model="openai-chat:URL#MODEL"``: the episode goes as chat messages (an optional system message,
the exemplars as earlier user/assistant turns, then the query) to ``URL/chat/completions`` greedily
(``temperature=0``, ``max_tokens``, ``stop``), one conversation per request, ``concurrency`` in
flight. The server applies its own chat template, so no tokenizer is loaded here. Retries, the API
key, credential masking, concurrency and the served model's identity are the ``openai:`` backend's
(:mod:`.openai_client`).

The engine keys its cache on the prompt text, so :class:`ChatRenderer` renders the messages as
canonical JSON (what is sent, exactly) and the backend parses that text back: the cache key holds the
served model id and the exact messages. Without a tokenizer, over-long exemplars and queries are
cut to a character budget (:data:`CHARS_PER_TOKEN` characters per token of the in-process token
budgets), and token counts are the server's own (``usage``).

A chat endpoint returns no log-probabilities of a given reference, so this backend has no
``loglik``: the engine refuses the ``"loglik"`` signal (``train_reward="loglik"``) at once, and
learners train on the generation reward.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..cache import LRUCache
from ..data import Example
from ..prompts import hash_text, user_text
from .base import BackendError, cut_at_stop
from .openai_client import OpenAIClient, public_url, split_server_target

__all__ = ["CHARS_PER_TOKEN", "ChatBackend", "ChatRenderer", "split_chat_target"]

CHARS_PER_TOKEN = 4  # a typical rate for English text and BPE tokenizers; turns token budgets into characters


def split_chat_target(target: str) -> tuple[str, str]:
    """``"URL#MODEL"`` -> (base URL, served model name)."""
    url, model = split_server_target(target, "openai-chat", ("URL#MODEL",))
    return url, model


@dataclass
class ChatRenderer:
    """Turns exemplars + query into chat messages, and those into canonical JSON text (the prompt the
    engine caches and the backend sends).

    Args:
        system: a system message first (``None``: none, so the server's chat template adds its
            default, as the in-process renderer does).
        max_exemplar_chars: exemplars whose input or output exceed this many characters are cut to
            it, with a warning naming the exemplar (``None``: no limit). The default is the
            in-process 256 tokens at :data:`CHARS_PER_TOKEN` characters each.
        max_query_chars: the same for the query's instruction and input (1024 tokens' worth).
    """

    system: str | None = None
    max_exemplar_chars: int | None = 256 * CHARS_PER_TOKEN
    max_query_chars: int | None = 1024 * CHARS_PER_TOKEN
    use_chat_template = True  # what callers check to know a renderer speaks in messages

    @property
    def fingerprint(self) -> str:
        return f"chat-json-v1:{hash_text(str(self.system))}:{self.max_exemplar_chars}:{self.max_query_chars}"

    def _cut(self, text: str, what: str, limit: int | None) -> str:
        if limit is None or len(text) <= limit:
            return text
        setting = "max_query_chars" if what.startswith("query") else "max_exemplar_chars"
        warnings.warn(f"{what} has {len(text)} characters; truncated to {setting}={limit}", stacklevel=4)
        return text[:limit]

    def messages(self, exemplars: Sequence[Example], query: Example) -> list[dict[str, str]]:
        """The messages sent: system (if set), each exemplar as a user turn and its answer, the query."""
        out = [{"role": "system", "content": self.system}] if self.system is not None else []
        for i, ex in enumerate(exemplars):
            label, limit = f"exemplar {i} ({ex.instruction[:40]!r})", self.max_exemplar_chars
            ex = Example(ex.instruction, self._cut(ex.input, label + " input", limit),
                         self._cut(ex.output, label + " output", limit), ex.metadata)
            out += [{"role": "user", "content": user_text(ex)}, {"role": "assistant", "content": ex.output}]
        label, limit = f"query ({query.instruction[:40]!r})", self.max_query_chars
        query = Example(self._cut(query.instruction, label + " instruction", limit),
                        self._cut(query.input, label + " input", limit))
        return out + [{"role": "user", "content": user_text(query)}]

    def render(self, exemplars: Sequence[Example], query: Example) -> str:
        """The messages as canonical JSON (sorted keys, no spaces): the same episode, the same text."""
        return json.dumps(self.messages(exemplars, query), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    def render_pair(self, exemplars: Sequence[Example], example: Example) -> tuple[str, str]:
        raise ValueError("openai-chat: a chat-completions endpoint serves weights this package cannot train; "
                         "train the backbone (PLW) on its Hugging Face folder instead")


def parse_messages(prompt: str) -> list[dict[str, str]]:
    """The message list :meth:`ChatRenderer.render` wrote, checked, or a ``ValueError`` saying what it got."""
    try:
        messages = json.loads(prompt)
    except json.JSONDecodeError:
        messages = None
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and all(isinstance(v, str) for v in m.values())
            for m in messages)):
        raise ValueError(f"openai-chat: a prompt must be the JSON message list ChatRenderer.render writes, got "
                         f"{prompt[:60]!r}")
    return messages


class ChatBackend(OpenAIClient):
    """The LLM behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        base_url, model, api_key, api_key_env, max_retries, timeout, concurrency: as
            :class:`~pillow_env.backends.openai_client.OpenAIClient`.
        renderer: the :class:`ChatRenderer` (its ``system`` message and character budgets).
    """

    def __init__(self, base_url: str, model: str, renderer: ChatRenderer | None = None, **client: Any) -> None:
        super().__init__(base_url, model, **client)
        self.renderer = renderer or ChatRenderer()
        self._fingerprint: str | None = None
        self._tokens = LRUCache(100_000)  # text -> tokens the server counted for it (usage)

    @classmethod
    def from_spec(cls, target: str, **kwargs: Any) -> ChatBackend:
        """From the part after ``openai-chat:``; ``system``, ``max_exemplar_chars`` and
        ``max_query_chars`` go to the renderer, the rest to the client."""
        url, model = split_chat_target(target)
        renderer = ChatRenderer(**{k: kwargs.pop(k) for k in ("system", "max_exemplar_chars", "max_query_chars")
                                   if k in kwargs})
        return cls(url, model, renderer, **kwargs)

    @property
    def name(self) -> str:
        return f"openai-chat:{public_url(self.base_url)}#{self.model}"

    def _chat(self, prompt: str, params: dict[str, Any]) -> str:
        messages = parse_messages(prompt)
        response = self._call(lambda: self._client.chat.completions.create(model=self.model, messages=messages,
                                                                            **params), "chat completion")
        if not response.choices:
            raise BackendError(f"{public_url(self.base_url)} ({self.model}): a chat completion came back with no "
                               "choices")
        text = response.choices[0].message.content or ""
        usage = getattr(response, "usage", None)
        if usage is not None:
            self._tokens.put(prompt, int(usage.prompt_tokens))
            self._tokens.put(cut_at_stop(text, params.get("stop", ())), int(usage.completion_tokens))
        return text

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32, *, batch_size: int = 16,
                 stop: Sequence[str] = ()) -> list[str]:
        """Greedy replies, in order, one conversation per request (``concurrency`` at a time); text from
        the first ``stop`` string on is cut, as on every backend. ``batch_size`` is unused: a chat
        request holds one conversation."""
        params = {"max_tokens": max_new_tokens, "temperature": 0.0, **({"stop": list(stop)} if stop else {})}
        texts = self._map(lambda p: self._chat(p, params), list(prompts))
        return [cut_at_stop(text, stop) for text in texts]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens as the server counted them (``usage``) for prompts and replies it handled; other text
        is estimated at :data:`CHARS_PER_TOKEN` characters per token (no tokenizer is loaded here)."""
        counted = [self._tokens.get(t) for t in texts]
        return [c if c is not None else math.ceil(len(t) / CHARS_PER_TOKEN) for c, t in zip(counted, texts)]

    @property
    def fingerprint(self) -> str:
        """The served model as the server reports it (id, root, owner) plus the message format."""
        if self._fingerprint is None:
            h = hashlib.sha256(repr(("openai-chat", self._served_identity(), self.renderer.fingerprint)).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint
