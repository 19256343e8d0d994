"""What every LLM backend is and shares: the protocol the engine calls, typed errors, and the
token counting, stop-string cutting and likelihood tokenization all backends do the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["Generator", "BackendError", "LikelihoodUnsupported", "ServerRejected", "ServerUnreachable",
           "TokenizerBackend", "cut_at_stop", "loglik_token_ids"]


class BackendError(RuntimeError):
    """A backend could not answer (server down after retries, HTTP error, missing capability);
    the message names the backend, never its credentials."""


class LikelihoodUnsupported(BackendError, ValueError):
    """The backend cannot score likelihoods (the ``"loglik"`` signal): no ``loglik`` method, or a
    server that offers neither vLLM's ``prompt_logprobs`` nor ``echo`` with ``logprobs``."""


class ServerRejected(BackendError):
    """The server answered with an HTTP error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachable(BackendError):
    """No answer after the client's retries (connection refused, timeouts)."""


class Generator(Protocol):
    """What the reward engine needs from an LLM backend (``Backbone`` is the in-process one).

    ``loglik(prompts, targets, mean=True)`` is optional: only the ``"loglik"`` signal needs it.
    """

    fingerprint: str
    renderer: Any

    def generate(self, prompts: Sequence[str], max_new_tokens: int = ..., *, batch_size: int = ...,
                 stop: Sequence[str] = ...) -> list[str]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """A completion cut before its first ``stop`` string, stripped: the same on every backend."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text.strip()


class TokenizerBackend:
    """Token counting as the backend's own prompts are tokenized (``self.tokenizer`` and
    ``self._add_special_tokens``, set by the backend)."""

    tokenizer: Any
    _add_special_tokens: bool

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        enc = self.tokenizer(list(texts), add_special_tokens=self._add_special_tokens)
        return [len(ids) for ids in enc["input_ids"]]


def loglik_token_ids(tokenizer: Any, prompts: list[str] | tuple[str, ...], targets: list[str] | tuple[str, ...],
                     add_special_tokens: bool) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of prompts and targets, tokenized apart (so the scored tokens are exactly the
    target's whatever merges the boundary would allow), with the checks every backend's ``loglik`` needs."""
    if len(prompts) != len(targets):
        raise ValueError(f"loglik: {len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        return [], []
    p_ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    t_ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        if not p:
            raise ValueError(f"loglik: prompt {i} is empty; need at least one token of context")
        if not t:
            raise ValueError(f"loglik: target {i} is empty; nothing to score")
    return p_ids, t_ids
